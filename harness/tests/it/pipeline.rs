//! Every kind of change in every table arrives from Debezium, in order per key.

use std::time::Duration;

use harness::testing::TestStack;
use harness::workload::executor;
use harness::workload::model::{NewAddress, NewCustomer, Operation};

use crate::support::{by_key, cdc_topics, consume_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_on_every_table_arrives_in_order_per_key() -> anyhow::Result<()> {
    let stack = TestStack::start("pipeline", |c| {
        c.with_sink = false;
        c.seed.customers = 50;
    })
    .await?;
    let pg = stack.endpoints.postgres.connect("app").await?;
    let seeded: i64 = pg.query_one("select count(*) from customer", &[]).await?.get(0);
    assert_eq!(seeded, 50);

    // One new row per table, then an update and a delete of each, leaves first.
    let c = uuid::Uuid::new_v4();
    let a = uuid::Uuid::new_v4();
    let o = uuid::Uuid::new_v4();
    let i = uuid::Uuid::new_v4();
    pg.execute("insert into customer (id, email, status) values ($1, 'it@example.com', 'active')", &[&c]).await?;
    pg.execute(
        "insert into address (id, customer_id, type, street, city, postal_code, country) values ($1, $2, 'billing', '1 Main St', 'Springfield', '12345', 'US')",
        &[&a, &c],
    )
    .await?;
    pg.execute("insert into orders (id, customer_id, status, total_amount) values ($1, $2, 'pending', 10.50)", &[&o, &c]).await?;
    pg.execute(
        "insert into order_item (id, order_id, product_sku, product_name, quantity, unit_price, line_total) values ($1, $2, 'SKU-1', 'Thing', 1, 10.50, 10.50)",
        &[&i, &o],
    )
    .await?;
    pg.execute("update customer set status = 'inactive' where id = $1", &[&c]).await?;
    pg.execute("update address set city = 'Riverton' where id = $1", &[&a]).await?;
    pg.execute("update orders set status = 'paid' where id = $1", &[&o]).await?;
    pg.execute("update order_item set quantity = 2, line_total = 21.00 where id = $1", &[&i]).await?;
    for (table, id) in [("order_item", i), ("orders", o), ("address", a), ("customer", c)] {
        pg.execute(&format!("delete from {table} where id = $1"), &[&id]).await?;
    }

    // A write of the workload API with a trace context: every change of its transaction
    // carries the context as a `traceparent` header, so the sink continues the trace.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = NewCustomer { id: uuid::Uuid::new_v4(), email: "traced@example.com".into(), status: "active" };
    let traced_address = NewAddress {
        id: uuid::Uuid::new_v4(),
        customer_id: traced.id,
        kind: "shipping",
        street: "2 Side St".into(),
        city: "Springfield",
        state: None,
        postal_code: "12345".into(),
        country: "US",
        is_default: true,
    };
    let pool = executor::pool(&stack.endpoints.postgres, 1)?;
    let operation = Operation::CreateCustomer { customer: traced.clone(), addresses: vec![traced_address.clone()] };
    executor::execute(&pool, &operation, Some(traceparent)).await?;

    let created = [("customer", c), ("address", a), ("orders", o), ("order_item", i)];
    let expected_keys: Vec<(String, String)> = created.iter().map(|(t, id)| (format!("cdc.public.{t}"), id.to_string())).collect();
    let traced_keys = [("cdc.public.customer".to_string(), traced.id.to_string()), ("cdc.public.address".to_string(), traced_address.id.to_string())];
    let events = consume_until(&stack.endpoints.kafka, &cdc_topics(), Duration::from_secs(90), |events| {
        let keyed = by_key(events);
        // Seed snapshot rows plus, per new key: c, u, d and the tombstone.
        expected_keys.iter().all(|k| keyed.get(k).is_some_and(|v| v.len() >= 4))
            && traced_keys.iter().all(|k| keyed.contains_key(k))
            && events.iter().filter(|e| e.op() == Some("r")).count() >= 50
    })
    .await?;
    assert!(events.iter().all(|e| e.topic.starts_with("cdc.public.")), "the trace message is not forwarded as an event");

    let keyed = by_key(&events);
    for key in &traced_keys {
        let history = &keyed[key];
        assert_eq!(history.len(), 1, "{key:?}");
        assert_eq!(history[0].op(), Some("c"));
        assert_eq!(history[0].header("traceparent"), Some(traceparent), "trace context of {key:?}");
    }
    assert!(events.iter().filter(|e| e.header("traceparent").is_some()).count() == 2, "only the traced transaction carries the header");
    for key in &expected_keys {
        let history = &keyed[key];
        let ops: Vec<Option<&str>> = history.iter().map(|e| e.op()).collect();
        assert_eq!(ops, vec![Some("c"), Some("u"), Some("d"), None], "ops of {key:?}");
        let lsns: Vec<i64> = history.iter().filter_map(|e| e.lsn()).collect();
        assert!(lsns.windows(2).all(|w| w[0] < w[1]), "LSNs of {key:?} not increasing: {lsns:?}");
        // Same key means same partition: per-key order is the partition's order.
        assert!(history.windows(2).all(|w| w[0].partition == w[1].partition && w[0].offset < w[1].offset));
    }
    let snapshot_customers = events.iter().filter(|e| e.topic == "cdc.public.customer" && e.op() == Some("r")).count();
    assert_eq!(snapshot_customers, 50, "snapshot must read every seeded customer once");
    for table in ["address", "orders", "order_item"] {
        let topic = format!("cdc.public.{table}");
        assert!(events.iter().any(|e| e.topic == topic && e.op() == Some("r")), "no snapshot events on {topic}");
    }
    let update = keyed[&expected_keys[0]][1];
    assert_eq!(update.value.as_ref().unwrap()["before"]["status"], "active", "REPLICA IDENTITY FULL gives the before image");
    assert_eq!(update.row().unwrap()["status"], "inactive");
    let orders_row = keyed[&expected_keys[2]][0].row().unwrap();
    assert_eq!(orders_row["total_amount"], "10.50", "decimals arrive as strings");
    Ok(())
}
