-- What the gateway reported of the market's routes, per minute, application, product and status
-- class (2 for 2xx …; 0 for the row counting entries the gateway dropped). Latencies in a
-- histogram: l0 counts requests up to 1 ms, l1 up to 2 ms … l11 over 2 s (see domain::usage).
CREATE TABLE usage_minutes (
    minute         TEXT NOT NULL,
    application_id TEXT NOT NULL,
    product_id     TEXT NOT NULL,
    status         BIGINT NOT NULL,
    requests       BIGINT NOT NULL,
    bytes          BIGINT NOT NULL,
    latency_ms     BIGINT NOT NULL,
    dropped        BIGINT NOT NULL,
    l0 BIGINT NOT NULL, l1 BIGINT NOT NULL, l2 BIGINT NOT NULL, l3 BIGINT NOT NULL,
    l4 BIGINT NOT NULL, l5 BIGINT NOT NULL, l6 BIGINT NOT NULL, l7 BIGINT NOT NULL,
    l8 BIGINT NOT NULL, l9 BIGINT NOT NULL, l10 BIGINT NOT NULL, l11 BIGINT NOT NULL,
    PRIMARY KEY (minute, application_id, product_id, status)
);
CREATE INDEX usage_minutes_application ON usage_minutes (application_id, minute);
CREATE INDEX usage_minutes_product ON usage_minutes (product_id, minute);
