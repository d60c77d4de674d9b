//! The source at PostgreSQL's default `REPLICA IDENTITY DEFAULT` (the harness's own schema
//! uses FULL): a delete's before image carries only the key, Debezium fills the other
//! required columns with empty values, and the sink must still apply the delete. Also pins
//! the shape of `source.sequence`, which the sink orders versions by.

use std::time::{Duration, Instant};

use harness::testing::TestStack;

use crate::support::{cdc_topics, consume_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_under_replica_identity_default_reach_the_target() -> anyhow::Result<()> {
    let stack = TestStack::start("replica-identity", |c| c.seed.customers = 5).await?;
    let pg = stack.endpoints.postgres.connect("app").await?;
    pg.batch_execute("ALTER TABLE order_item REPLICA IDENTITY DEFAULT; ALTER TABLE customer REPLICA IDENTITY DEFAULT").await?;
    let (c, lone, o, i) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4(), uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    pg.execute("insert into customer (id, email, status) values ($1, 'ri@example.com', 'active'), ($2, 'lone@example.com', 'active')", &[&c, &lone]).await?;
    pg.execute("insert into orders (id, customer_id, status, total_amount) values ($1, $2, 'pending', 10.50)", &[&o, &c]).await?;
    pg.execute(
        "insert into order_item (id, order_id, product_sku, product_name, quantity, unit_price, line_total) values ($1, $2, 'SKU-1', 'Thing', 1, 10.50, 10.50)",
        &[&i, &o],
    )
    .await?;
    pg.execute("update order_item set quantity = 2, line_total = 21.00 where id = $1", &[&i]).await?;
    pg.execute("delete from order_item where id = $1", &[&i]).await?;
    pg.execute("delete from customer where id = $1", &[&lone]).await?;

    let target = stack.endpoints.postgres.connect_target().await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let item: Option<bool> = target.query_opt("SELECT _cdc_deleted FROM order_item_materialized WHERE id = $1", &[&i]).await?.map(|r| r.get(0));
        let customer: Option<bool> = target.query_opt("SELECT _cdc_deleted FROM customer_materialized WHERE id = $1", &[&lone]).await?.map(|r| r.get(0));
        if item == Some(true) && customer == Some(true) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "deletes not applied: order_item deleted={item:?}, customer deleted={customer:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // What Debezium really sent: a key-only before image, and the sequence the sink reads.
    let events = consume_until(&stack.endpoints.kafka, &cdc_topics(), Duration::from_secs(60), |events| {
        events.iter().any(|e| e.op() == Some("d") && e.key_id().as_deref() == Some(i.to_string().as_str()))
    })
    .await?;
    let delete = events.iter().find(|e| e.op() == Some("d") && e.key_id().as_deref() == Some(i.to_string().as_str())).expect("the delete event");
    let before = delete.row().expect("a before image");
    assert_eq!(before["id"], i.to_string());
    assert_ne!(before["product_sku"], "SKU-1", "REPLICA IDENTITY DEFAULT sends the key only: {before}");
    let update = events.iter().find(|e| e.op() == Some("u") && e.key_id().as_deref() == Some(i.to_string().as_str())).expect("the update event");
    assert!(update.value.as_ref().unwrap()["before"].is_null(), "no before image for updates either");
    let sequence = delete.value.as_ref().unwrap()["source"]["sequence"].as_str().expect("source.sequence is a string");
    let parsed: Vec<Option<String>> = serde_json::from_str(sequence)?;
    assert_eq!(parsed.len(), 2, "{sequence}");
    assert_eq!(parsed[1].as_deref(), Some(delete.lsn().unwrap().to_string().as_str()), "the second element is the change's LSN: {sequence}");
    let commit: i64 = parsed[0].as_deref().expect("a streamed transaction after the first has its last commit").parse()?;
    assert!(commit > 0, "{sequence}");
    Ok(())
}
