-- The embedded event bus: durable queues in one SQLite file, with RabbitMQ's topic semantics.

-- Which event types (topic patterns, `*` one word, `#` any) each queue receives.
CREATE TABLE bindings (
    queue   TEXT NOT NULL,
    pattern TEXT NOT NULL,
    PRIMARY KEY (queue, pattern)
);

-- Messages waiting in a queue; deleted when the consumer acknowledges them.
CREATE TABLE messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    queue      TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    payload    TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    visible_at TEXT NOT NULL
);
CREATE INDEX messages_queue ON messages (queue, visible_at, id);

-- Messages that failed max_attempts times (or could not be read at all), kept for replay.
CREATE TABLE dead_letters (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    queue     TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    payload   TEXT NOT NULL,
    attempts  INTEGER NOT NULL,
    error     TEXT NOT NULL,
    died_at   TEXT NOT NULL
);
CREATE INDEX dead_letters_queue ON dead_letters (queue, id);
