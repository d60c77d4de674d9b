//! Runs operations against the source database, one transaction each.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;

use super::model::Operation;
use crate::orchestrator::PgEndpoint;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The key (or its parent) is gone: deleted by a concurrent operation or a cascade.
    #[error("the key no longer exists")]
    Vanished,
    /// Deadlock or serialization failure: retry the same operation.
    #[error("lock contention (deadlock or serialization failure)")]
    Contention,
    #[error("database: {}", .0.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| .0.to_string()))]
    Database(#[from] tokio_postgres::Error),
    #[error("connection pool: {0}")]
    Pool(String),
    #[error("source: {0}")]
    Connect(#[from] crate::orchestrator::PgConnectError),
}

pub fn pool(pg: &PgEndpoint, size: usize) -> Result<Pool, ExecError> {
    let dsn = pg.source_dsn()?;
    let tls = dsn.connector().map_err(crate::orchestrator::PgConnectError::from)?;
    let (config, tls) = tls.for_pool(&dsn.config);
    let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager).max_size(size).build().map_err(|e| ExecError::Pool(e.to_string()))
}

/// Whether a W3C traceparent has its `sampled` flag (trace-flags bit 0) set.
pub fn sampled(traceparent: &str) -> bool {
    traceparent.rsplit('-').next().and_then(|flags| u8::from_str_radix(flags, 16).ok()).is_some_and(|f| f & 1 == 1)
}

/// Executes `op` in one transaction, carrying `traceparent` through the pipeline when it is
/// sampled: an unsampled trace records no span downstream, so its context is not worth a
/// logical message in the WAL and a header on every change event of the transaction.
pub async fn execute(pool: &Pool, op: &Operation, traceparent: Option<&str>) -> Result<(), ExecError> {
    let mut client = pool.get().await.map_err(|e| ExecError::Pool(e.to_string()))?;
    let tx = client.transaction().await?;
    if let Some(tp) = traceparent.filter(|tp| sampled(tp)) {
        // First in the transaction, so the change stream carries the trace context ahead of
        // the rows; the Debezium launcher turns it into a `traceparent` header on each of them.
        tx.execute("SELECT pg_logical_emit_message(true, 'traceparent', $1::text)", &[&tp]).await?;
    }
    let affected = run(&tx, op).await.map_err(|e| match e.code() {
        Some(code) if *code == SqlState::FOREIGN_KEY_VIOLATION => ExecError::Vanished,
        // Two operations locked the same rows in opposite orders (e.g. an order and its
        // items); Postgres aborted one. The application retries it, as real ones do.
        Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE => ExecError::Contention,
        _ => ExecError::Database(e),
    })?;
    if affected == 0 {
        tx.rollback().await?;
        return Err(ExecError::Vanished);
    }
    if let Some(tp) = traceparent {
        tx.execute("INSERT INTO harness.write_trace (traceparent) VALUES ($1)", &[&tp]).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn run(tx: &tokio_postgres::Transaction<'_>, op: &Operation) -> Result<u64, tokio_postgres::Error> {
    Ok(match op {
        Operation::CreateCustomer { customer, addresses } => {
            let mut n = tx.execute("INSERT INTO customer (id, email, status) VALUES ($1, $2, $3)", &[&customer.id, &customer.email, &customer.status]).await?;
            for a in addresses {
                n += insert_address(tx, a).await?;
            }
            n
        }
        Operation::AddAddress(a) => insert_address(tx, a).await?,
        Operation::PlaceOrder { order, items } => {
            let mut n = tx
                .execute(
                    "INSERT INTO orders (id, customer_id, status, total_amount) VALUES ($1, $2, 'pending', $3)",
                    &[&order.id, &order.customer_id, &order.total],
                )
                .await?;
            for i in items {
                n += insert_item(tx, i).await?;
            }
            n
        }
        Operation::AddItem(i) => {
            // The order must still be open for a new line; its total follows the lines.
            let n = tx
                .execute(
                    "UPDATE orders SET total_amount = total_amount + $2, updated_at = now() WHERE id = $1 AND status = 'pending'",
                    &[&i.order_id, &i.line_total()],
                )
                .await?;
            if n == 0 { 0 } else { insert_item(tx, i).await? }
        }
        Operation::UpdateCustomer { id, email, status } => {
            tx.execute("UPDATE customer SET email = coalesce($2, email), status = coalesce($3, status), updated_at = now() WHERE id = $1", &[id, email, status])
                .await?
        }
        Operation::MoveAddress { id, street, city } => {
            tx.execute("UPDATE address SET street = $2, city = $3, updated_at = now() WHERE id = $1", &[id, street, city]).await?
        }
        Operation::AdvanceOrder { id, from, to } => {
            // Guarded by the current status: a concurrent move makes this one vanish, never skip a state.
            tx.execute("UPDATE orders SET status = $3, updated_at = now() WHERE id = $1 AND status = $2", &[id, from, to]).await?
        }
        Operation::ChangeQuantity { id, quantity } => {
            let rows = tx
                .query("UPDATE order_item SET quantity = $2::int4, line_total = unit_price * $2::int4 WHERE id = $1 RETURNING order_id", &[id, quantity])
                .await?;
            match rows.first() {
                Some(row) => {
                    let order: uuid::Uuid = row.get(0);
                    tx.execute(
                        "UPDATE orders SET total_amount = (SELECT coalesce(sum(line_total), 0) FROM order_item WHERE order_id = $1), updated_at = now() WHERE id = $1",
                        &[&order],
                    )
                    .await?;
                    1
                }
                None => 0,
            }
        }
        Operation::DeleteItem(id) => tx.execute("DELETE FROM order_item WHERE id = $1", &[id]).await?,
        Operation::DeleteAddress(id) => tx.execute("DELETE FROM address WHERE id = $1", &[id]).await?,
        Operation::DeleteOrder(id) => tx.execute("DELETE FROM orders WHERE id = $1", &[id]).await?,
        Operation::DeleteCustomer(id) => tx.execute("DELETE FROM customer WHERE id = $1", &[id]).await?,
    })
}

async fn insert_address(tx: &tokio_postgres::Transaction<'_>, a: &super::model::NewAddress) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO address (id, customer_id, type, street, city, state, postal_code, country, is_default) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[&a.id, &a.customer_id, &a.kind, &a.street, &a.city, &a.state, &a.postal_code, &a.country, &a.is_default],
    )
    .await
}

async fn insert_item(tx: &tokio_postgres::Transaction<'_>, i: &super::model::NewItem) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO order_item (id, order_id, product_sku, product_name, quantity, unit_price, line_total) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[&i.id, &i.order_id, &i.sku, &i.name, &i.quantity, &i.unit_price, &i.line_total()],
    )
    .await
}

/// Loads the keys the database holds into a fresh registry (seed data, earlier runs).
pub async fn load_registry(pg: &PgEndpoint) -> Result<super::model::Registry, ExecError> {
    let client = pg.connect_source().await?;
    let mut registry = super::model::Registry::default();
    for row in client.query("SELECT id FROM customer", &[]).await? {
        registry.customers.insert(row.get(0));
    }
    for row in client.query("SELECT id FROM address", &[]).await? {
        registry.addresses.insert(row.get(0));
    }
    for row in client.query("SELECT id, status FROM orders", &[]).await? {
        let id = row.get(0);
        registry.orders.insert(id);
        let status: String = row.get(1);
        if let Some(s) = super::model::ORDER_STATUSES.iter().find(|s| **s == status && !matches!(**s, "delivered" | "cancelled")) {
            registry.open_orders.insert(id, s);
        }
    }
    for row in client.query("SELECT id FROM order_item", &[]).await? {
        registry.items.insert(row.get(0));
    }
    Ok(registry)
}
