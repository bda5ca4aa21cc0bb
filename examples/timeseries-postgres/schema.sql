-- edge-agent telemetry in PostgreSQL: one row per reading (one point of one sample).
--
-- The agent numbers its samples (id, increasing per agent) and delivers them at least once, so
-- (agent, id, point) is the key: a batch that arrives twice inserts nothing the second time
-- (consumer.py inserts with ON CONFLICT DO NOTHING).
--
-- Numbers go to "value"; booleans too, as 0/1 (avg() of them is the fraction of time on);
-- strings go to "text_value" with "value" NULL. "unsynced" marks a sample the agent sent with
-- "clock": "unsynced": its ts comes from a wall clock the agent could not trust.
--
-- On TimescaleDB, after creating the table: SELECT create_hypertable('readings', 'ts');
-- (a hypertable's unique keys must include ts: use PRIMARY KEY (agent, id, point, ts) there).

CREATE TABLE IF NOT EXISTS readings (
    agent      text             NOT NULL,
    device     text             NOT NULL,
    id         bigint           NOT NULL,
    ts         timestamptz      NOT NULL,
    point      text             NOT NULL,
    value      double precision,
    text_value text,
    unsynced   boolean          NOT NULL DEFAULT false,
    PRIMARY KEY (agent, id, point)
);

-- "this device's point over time": latest values, ranges, hourly averages
CREATE INDEX IF NOT EXISTS readings_device_point_ts ON readings (device, point, ts);
