-- Receivables raised for orders (by the settlement saga), cancellable.
CREATE TABLE receivables (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    debtor_org TEXT NOT NULL,
    status TEXT NOT NULL,
    due_date TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX receivables_debtor ON receivables (debtor_org, id);

-- Deposit accounts: one per organisation and currency. `version` grows with every movement;
-- updating it first serialises movements on one account (the row lock on PostgreSQL, the
-- write lock on SQLite). Balances are never stored: they are sums of ledger entries.
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    CONSTRAINT accounts_org_currency_key UNIQUE (org_id, currency)
);

-- Holds on an account's available balance (a dealer leading a lot, say).
CREATE TABLE holds (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    amount BIGINT NOT NULL,
    reason TEXT NOT NULL,
    reference TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX holds_account ON holds (account_id, status);

-- Every movement of money: a top-up, a hold, its release or its capture.
CREATE TABLE movements (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    kind TEXT NOT NULL,
    amount BIGINT NOT NULL,
    hold_id TEXT,
    reference TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX movements_account ON movements (account_id, id);

-- The ledger: each movement's entries sum to zero. `book` is the account's `available` or
-- `held` balance, or one of the platform's books (`platform:cash`, `platform:captured`).
CREATE TABLE ledger_entries (
    id TEXT PRIMARY KEY,
    movement_id TEXT NOT NULL REFERENCES movements (id),
    account_id TEXT NOT NULL,
    book TEXT NOT NULL,
    amount BIGINT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX ledger_entries_book ON ledger_entries (account_id, book);
CREATE INDEX ledger_entries_movement ON ledger_entries (movement_id);
