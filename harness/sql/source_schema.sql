-- Source schema of the pipeline under test (SPEC section 3). REPLICA IDENTITY FULL makes
-- update and delete events carry the complete `before` image, which the sink's temporal
-- and business validation (status transitions) and the verifier's anomaly witnesses use.
CREATE EXTENSION IF NOT EXISTS pgcrypto;

CREATE TABLE customer (
    id          uuid PRIMARY KEY,
    email       text NOT NULL,
    status      text NOT NULL CHECK (status IN ('active', 'inactive', 'blocked')),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE address (
    id           uuid PRIMARY KEY,
    customer_id  uuid NOT NULL REFERENCES customer (id) ON DELETE CASCADE,
    type         text NOT NULL CHECK (type IN ('billing', 'shipping')),
    street       text NOT NULL,
    city         text NOT NULL,
    state        text,
    postal_code  text NOT NULL,
    country      text NOT NULL,
    is_default   boolean NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX address_customer_id ON address (customer_id);

CREATE TABLE orders (
    id            uuid PRIMARY KEY,
    customer_id   uuid NOT NULL REFERENCES customer (id) ON DELETE CASCADE,
    status        text NOT NULL CHECK (status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled')),
    total_amount  numeric(12, 2) NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_id ON orders (customer_id);

CREATE TABLE order_item (
    id            uuid PRIMARY KEY,
    order_id      uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_sku   text NOT NULL,
    product_name  text NOT NULL,
    quantity      integer NOT NULL CHECK (quantity > 0),
    unit_price    numeric(12, 2) NOT NULL,
    line_total    numeric(12, 2) NOT NULL
);
CREATE INDEX order_item_order_id ON order_item (order_id);

ALTER TABLE customer   REPLICA IDENTITY FULL;
ALTER TABLE address    REPLICA IDENTITY FULL;
ALTER TABLE orders     REPLICA IDENTITY FULL;
ALTER TABLE order_item REPLICA IDENTITY FULL;

-- The verifier's delete ledger: which keys the source deleted and in which transaction
-- (its commit time comes from track_commit_timestamp). It tells a resurrected delete from
-- an extra row and a lost delete. Not in the publication: the pipeline never sees it.
CREATE SCHEMA IF NOT EXISTS harness;
CREATE TABLE IF NOT EXISTS harness.deleted_keys (
    table_name  text NOT NULL,
    id          uuid NOT NULL,
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (table_name, id)
);
CREATE OR REPLACE FUNCTION harness.record_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO harness.deleted_keys (table_name, id) VALUES (TG_TABLE_NAME, OLD.id)
    ON CONFLICT (table_name, id) DO UPDATE SET xid = excluded.xid;
    RETURN OLD;
END $$;
CREATE TRIGGER customer_deleted   AFTER DELETE ON customer   FOR EACH ROW EXECUTE FUNCTION harness.record_delete();
CREATE TRIGGER address_deleted    AFTER DELETE ON address    FOR EACH ROW EXECUTE FUNCTION harness.record_delete();
CREATE TRIGGER orders_deleted     AFTER DELETE ON orders     FOR EACH ROW EXECUTE FUNCTION harness.record_delete();
CREATE TRIGGER order_item_deleted AFTER DELETE ON order_item FOR EACH ROW EXECUTE FUNCTION harness.record_delete();

-- W3C traceparent of the request that made each write (recorded by the workload API), so a
-- trace can be followed from the HTTP write to the sink's apply.
CREATE TABLE IF NOT EXISTS harness.write_trace (
    xid          xid8 PRIMARY KEY DEFAULT pg_current_xact_id(),
    traceparent  text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);

-- Debezium's heartbeat writes here (`heartbeat.action.query`, every few seconds). It is
-- captured (in the publication), so while the workload's tables are idle and the rest of
-- the database writes, the connector still sees a newer position and confirms it: the slot
-- releases WAL instead of holding it. Nothing materializes it.
CREATE TABLE IF NOT EXISTS cdc_heartbeat (
    id       integer PRIMARY KEY,
    beat_at  timestamptz NOT NULL
);
