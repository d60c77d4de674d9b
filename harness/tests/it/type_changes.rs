//! A known column changing type mid-stream, read from the events' own schemas (Debezium at
//! its defaults: JSON with schemas, `decimal.handling.mode=precise`): the scale comes from
//! the schema's parameters, never a fixed default, and the target is widened to what the
//! source now declares.

use std::time::{Duration, Instant};

use harness::testing::TestStack;
use rust_decimal::Decimal;

use crate::support::consume_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_price_moving_to_numeric_14_4_keeps_exact_values() -> anyhow::Result<()> {
    let stack = TestStack::start("type-change", |c| {
        c.seed.customers = 5;
        c.debezium_defaults = true;
    })
    .await?;
    let pg = stack.endpoints.postgres.connect("app").await?;
    let (c, o) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    pg.execute("insert into customer (id, email, status) values ($1, 'scale@example.com', 'active')", &[&c]).await?;
    pg.execute("insert into orders (id, customer_id, status, total_amount) values ($1, $2, 'pending', 10.50)", &[&o, &c]).await?;
    let item = |n: u8| uuid::Uuid::from_bytes([n; 16]);
    let insert = "insert into order_item (id, order_id, product_sku, product_name, quantity, unit_price, line_total) values ($1, $2, 'SKU', 'Thing', 1, $3::text::numeric, $3::text::numeric)";
    pg.execute(insert, &[&item(1), &o, &"10.50"]).await?;
    pg.batch_execute("ALTER TABLE order_item ALTER COLUMN unit_price TYPE numeric(14,4)").await?;
    pg.execute(insert, &[&item(2), &o, &"1234567890.1234"]).await?;
    pg.execute("update order_item set unit_price = 0.0001 where id = $1", &[&item(1)]).await?;
    pg.execute(insert, &[&item(3), &o, &"7.25"]).await?;

    let expected: Vec<(uuid::Uuid, Decimal)> = vec![(item(1), "0.0001".parse()?), (item(2), "1234567890.1234".parse()?), (item(3), "7.25".parse()?)];
    let target = stack.endpoints.postgres.connect_target().await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut got = Vec::new();
        for (id, _) in &expected {
            let row = target.query_opt("SELECT unit_price::text FROM order_item_materialized WHERE id = $1", &[id]).await?;
            got.push(row.and_then(|r| r.get::<_, Option<String>>(0)).map(|t| t.parse::<Decimal>()).transpose()?);
        }
        if got.iter().zip(&expected).all(|(g, (_, want))| g.as_ref() == Some(want)) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "target unit_price {got:?}, expected {expected:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // What the source now declares reached the target without a table rewrite: a larger
    // scale makes the column unconstrained numeric.
    let ty: String = target
        .query_one("SELECT data_type || coalesce('(' || numeric_precision || ',' || numeric_scale || ')', '') FROM information_schema.columns WHERE table_name = 'order_item_materialized' AND column_name = 'unit_price'", &[])
        .await?
        .get(0);
    assert_eq!(ty, "numeric");
    let dead: i64 = target.query_one("SELECT count(*) FROM _cdc_apply_log WHERE outcome = 'dlq'", &[]).await?.get(0);
    assert_eq!(dead, 0, "nothing dead-lettered");

    // What Debezium sent: its defaults, the schema naming the new scale.
    let topics = vec!["cdc.public.order_item".to_string()];
    // Events of three partitions arrive in any order: look at them all.
    let price_schema = |e: &crate::support::Event| {
        let value = e.value.as_ref()?;
        let after = value["schema"]["fields"].as_array()?.iter().find(|f| f["field"] == "after")?;
        after["fields"].as_array()?.iter().find(|f| f["field"] == "unit_price").cloned()
    };
    let new_scale = |p: &serde_json::Value| p["parameters"]["scale"] == "4" && p["parameters"]["connect.decimal.precision"] == "14";
    let events =
        consume_until(&stack.endpoints.kafka, &topics, Duration::from_secs(60), |events| events.iter().filter_map(price_schema).any(|p| new_scale(&p))).await?;
    let schemas: Vec<serde_json::Value> = events.iter().filter_map(price_schema).collect();
    assert_eq!(schemas.len(), events.len(), "schemas are on: every event carries one");
    assert!(schemas.iter().all(|p| p["name"] == "org.apache.kafka.connect.data.Decimal"), "precise decimals: {schemas:?}");
    assert!(
        schemas.iter().any(|p| p["parameters"]["scale"] == "4" && p["parameters"]["connect.decimal.precision"] == "14"),
        "the new scale is declared: {schemas:?}"
    );
    Ok(())
}
