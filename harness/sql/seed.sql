-- Seed data loaded before Debezium starts, so the initial snapshot has work to do.
-- Parameters (substituted by the harness): :customers, :seed. UUIDs derive from md5 of
-- the seed and a counter, and random() is seeded, so the same seed gives the same data.
SELECT setseed(:seed_fraction);

INSERT INTO customer (id, email, status, updated_at)
SELECT md5(':seed-c-' || g)::uuid,
       'customer' || g || '@example.com',
       (ARRAY['active', 'active', 'active', 'inactive', 'blocked'])[1 + floor(random() * 5)::int],
       now() - make_interval(secs => floor(random() * 86400 * 30)::int)
FROM generate_series(1, :customers) AS g;

INSERT INTO address (id, customer_id, type, street, city, state, postal_code, country, is_default, updated_at)
SELECT md5(':seed-a-' || c.g || '-' || n)::uuid,
       md5(':seed-c-' || c.g)::uuid,
       CASE WHEN n = 1 THEN 'billing' ELSE 'shipping' END,
       (100 + floor(random() * 9000)::int) || ' ' || (ARRAY['Main St', 'Oak Ave', 'Pine Rd', 'Elm St', 'Lake Dr'])[1 + floor(random() * 5)::int],
       (ARRAY['Springfield', 'Riverton', 'Lakeside', 'Fairview', 'Georgetown'])[1 + floor(random() * 5)::int],
       (ARRAY['CA', 'NY', 'TX', 'WA', NULL])[1 + floor(random() * 5)::int],
       lpad(floor(random() * 99999)::int::text, 5, '0'),
       (ARRAY['US', 'US', 'US', 'CA', 'DE'])[1 + floor(random() * 5)::int],
       n = 1,
       now() - make_interval(secs => floor(random() * 86400 * 30)::int)
FROM generate_series(1, :customers) AS c(g)
CROSS JOIN LATERAL generate_series(1, 1 + (c.g % 3)) AS n;

INSERT INTO orders (id, customer_id, status, total_amount, created_at, updated_at)
SELECT md5(':seed-o-' || c.g || '-' || n)::uuid,
       md5(':seed-c-' || c.g)::uuid,
       (ARRAY['pending', 'paid', 'shipped', 'delivered', 'cancelled'])[1 + floor(random() * 5)::int],
       0,
       now() - interval '31 days',
       now() - make_interval(secs => floor(random() * 86400 * 30)::int)
FROM generate_series(1, :customers) AS c(g)
CROSS JOIN LATERAL generate_series(1, c.g % 4) AS n;

INSERT INTO order_item (id, order_id, product_sku, product_name, quantity, unit_price, line_total)
SELECT md5(o.id::text || '-i-' || n)::uuid,
       o.id,
       'SKU-' || lpad(p::text, 5, '0'),
       'Product ' || p,
       q,
       price,
       q * price
FROM orders AS o
CROSS JOIN LATERAL generate_series(1, 1 + (abs(hashtext(o.id::text)) % 4)) AS n
CROSS JOIN LATERAL (SELECT 1 + floor(random() * 500)::int AS p,
                           1 + floor(random() * 5)::int AS q,
                           round((1 + random() * 199)::numeric, 2) AS price) AS pick;

UPDATE orders AS o
SET total_amount = t.total
FROM (SELECT order_id, sum(line_total) AS total FROM order_item GROUP BY order_id) AS t
WHERE t.order_id = o.id;

ANALYZE;
