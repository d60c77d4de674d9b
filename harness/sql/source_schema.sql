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
