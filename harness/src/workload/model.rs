//! What the application does, as data: operations over customers, their addresses, orders
//! and order items that keep referential integrity and follow the business rules (order
//! status moves pending -> paid -> shipped -> delivered, or to cancelled before shipping).
//! The registry of live keys is the application's view; the database stays the truth (an
//! operation whose key vanished under a concurrent delete is retried on another key).

use std::collections::HashMap;

use rand::Rng;
use rand::seq::IndexedRandom;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::OpKind;

/// Order states and the transitions the business allows.
pub const ORDER_STATUSES: [&str; 5] = ["pending", "paid", "shipped", "delivered", "cancelled"];

pub fn next_order_status(current: &str, draw: u32) -> Option<&'static str> {
    match current {
        "pending" => Some(if draw % 5 == 0 { "cancelled" } else { "paid" }),
        "paid" => Some(if draw % 7 == 0 { "cancelled" } else { "shipped" }),
        "shipped" => Some("delivered"),
        _ => None,
    }
}

/// A set of keys with O(1) insert, remove and uniform pick.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Uuid>,
    positions: HashMap<Uuid, usize>,
}

impl KeySet {
    pub fn insert(&mut self, key: Uuid) {
        if self.positions.contains_key(&key) {
            return;
        }
        self.positions.insert(key, self.keys.len());
        self.keys.push(key);
    }

    pub fn remove(&mut self, key: &Uuid) -> bool {
        let Some(pos) = self.positions.remove(key) else { return false };
        let last = self.keys.pop().expect("non-empty: it held key");
        if last != *key {
            self.keys[pos] = last;
            self.positions.insert(last, pos);
        }
        true
    }

    pub fn pick(&self, rng: &mut impl Rng) -> Option<Uuid> {
        self.keys.choose(rng).copied()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Live keys per table, plus each open order's status.
#[derive(Debug, Default)]
pub struct Registry {
    pub customers: KeySet,
    pub addresses: KeySet,
    pub orders: KeySet,
    pub items: KeySet,
    /// Orders that can still move (not delivered or cancelled) and their status.
    pub open_orders: HashMap<Uuid, &'static str>,
}

/// One business operation; each runs as one transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// A new customer with one or two addresses.
    CreateCustomer {
        customer: NewCustomer,
        addresses: Vec<NewAddress>,
    },
    AddAddress(NewAddress),
    /// A new order with its items; the total is the sum of the lines.
    PlaceOrder {
        order: NewOrder,
        items: Vec<NewItem>,
    },
    /// One more item in an open order (its total follows).
    AddItem(NewItem),
    UpdateCustomer {
        id: Uuid,
        email: Option<String>,
        status: Option<&'static str>,
    },
    MoveAddress {
        id: Uuid,
        street: String,
        city: String,
    },
    AdvanceOrder {
        id: Uuid,
        from: &'static str,
        to: &'static str,
    },
    ChangeQuantity {
        id: Uuid,
        quantity: i32,
    },
    DeleteItem(Uuid),
    DeleteAddress(Uuid),
    /// Cascades to its items.
    DeleteOrder(Uuid),
    /// Cascades to its addresses, orders and items.
    DeleteCustomer(Uuid),
}

impl Operation {
    /// `insert.customer`, `update.orders`, ...: bounded names for counters.
    pub fn label(&self) -> &'static str {
        match self {
            Self::CreateCustomer { .. } => "insert.customer",
            Self::AddAddress(_) => "insert.address",
            Self::PlaceOrder { .. } => "insert.orders",
            Self::AddItem(_) => "insert.order_item",
            Self::UpdateCustomer { .. } => "update.customer",
            Self::MoveAddress { .. } => "update.address",
            Self::AdvanceOrder { .. } => "update.orders",
            Self::ChangeQuantity { .. } => "update.order_item",
            Self::DeleteItem(_) => "delete.order_item",
            Self::DeleteAddress(_) => "delete.address",
            Self::DeleteOrder(_) => "delete.orders",
            Self::DeleteCustomer(_) => "delete.customer",
        }
    }

    pub fn kind(&self) -> OpKind {
        match self.label().split('.').next() {
            Some("insert") => OpKind::Insert,
            Some("update") => OpKind::Update,
            _ => OpKind::Delete,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewCustomer {
    pub id: Uuid,
    pub email: String,
    pub status: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewAddress {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub kind: &'static str,
    pub street: String,
    pub city: &'static str,
    pub state: Option<&'static str>,
    pub postal_code: String,
    pub country: &'static str,
    pub is_default: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewOrder {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub total: Decimal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    pub id: Uuid,
    pub order_id: Uuid,
    pub sku: String,
    pub name: String,
    pub quantity: i32,
    pub unit_price: Decimal,
}

impl NewItem {
    pub fn line_total(&self) -> Decimal {
        self.unit_price * Decimal::from(self.quantity)
    }
}

const CITIES: [&str; 6] = ["Springfield", "Riverton", "Lakeside", "Fairview", "Georgetown", "Salem"];
const STATES: [Option<&str>; 5] = [Some("CA"), Some("NY"), Some("TX"), Some("WA"), None];
const STREETS: [&str; 5] = ["Main St", "Oak Ave", "Pine Rd", "Elm St", "Lake Dr"];
const COUNTRIES: [&str; 4] = ["US", "US", "CA", "DE"];
const CUSTOMER_STATUSES: [&str; 3] = ["active", "inactive", "blocked"];

fn new_address(rng: &mut impl Rng, customer_id: Uuid, is_default: bool) -> NewAddress {
    NewAddress {
        id: Uuid::new_v4(),
        customer_id,
        kind: if is_default { "billing" } else { "shipping" },
        street: format!("{} {}", rng.random_range(1..9999), STREETS.choose(rng).expect("non-empty")),
        city: CITIES.choose(rng).expect("non-empty"),
        state: *STATES.choose(rng).expect("non-empty"),
        postal_code: format!("{:05}", rng.random_range(0..99999)),
        country: COUNTRIES.choose(rng).expect("non-empty"),
        is_default,
    }
}

fn new_item(rng: &mut impl Rng, order_id: Uuid) -> NewItem {
    let product = rng.random_range(1..500);
    NewItem {
        id: Uuid::new_v4(),
        order_id,
        sku: format!("SKU-{product:05}"),
        name: format!("Product {product}"),
        quantity: rng.random_range(1..6),
        unit_price: Decimal::new(rng.random_range(100..20000), 2),
    }
}

impl Registry {
    /// Draws an operation of `kind`. Falls back to an insert when there is nothing to
    /// update or delete (an empty database).
    pub fn draw(&self, kind: OpKind, rng: &mut impl Rng) -> Operation {
        let draw: u32 = rng.random_range(0..100);
        let op = match kind {
            OpKind::Insert => Some(self.draw_insert(draw, rng)),
            OpKind::Update => self.draw_update(draw, rng),
            OpKind::Delete => self.draw_delete(draw, rng),
        };
        op.unwrap_or_else(|| self.draw_insert(0, rng))
    }

    fn draw_insert(&self, draw: u32, rng: &mut impl Rng) -> Operation {
        let customer = if draw >= 30 { self.customers.pick(rng) } else { None };
        match (draw, customer) {
            (30..45, Some(c)) => Operation::AddAddress(new_address(rng, c, false)),
            (45..85, Some(c)) => {
                let order_id = Uuid::new_v4();
                let items: Vec<NewItem> = (0..rng.random_range(1..5)).map(|_| new_item(rng, order_id)).collect();
                let total = items.iter().map(NewItem::line_total).sum();
                Operation::PlaceOrder { order: NewOrder { id: order_id, customer_id: c, total }, items }
            }
            (85.., Some(_)) => match self.pick_open_order(rng, |s| s == "pending") {
                Some(order) => Operation::AddItem(new_item(rng, order)),
                None => self.new_customer(rng),
            },
            _ => self.new_customer(rng),
        }
    }

    fn new_customer(&self, rng: &mut impl Rng) -> Operation {
        let id = Uuid::new_v4();
        let customer = NewCustomer { id, email: format!("{}@example.com", id.simple()), status: "active" };
        let addresses = (0..rng.random_range(1..3)).map(|i| new_address(rng, id, i == 0)).collect();
        Operation::CreateCustomer { customer, addresses }
    }

    fn pick_open_order(&self, rng: &mut impl Rng, filter: impl Fn(&str) -> bool) -> Option<Uuid> {
        // Sample a few orders rather than scanning: the open set can be large.
        (0..8).filter_map(|_| self.orders.pick(rng)).find(|o| self.open_orders.get(o).is_some_and(|s| filter(s)))
    }

    fn draw_update(&self, draw: u32, rng: &mut impl Rng) -> Option<Operation> {
        match draw {
            0..25 => self.customers.pick(rng).map(|id| {
                if rng.random_bool(0.5) {
                    Operation::UpdateCustomer { id, email: Some(format!("{}+{}@example.com", id.simple(), rng.random_range(0..1000))), status: None }
                } else {
                    Operation::UpdateCustomer { id, email: None, status: Some(CUSTOMER_STATUSES.choose(rng).expect("non-empty")) }
                }
            }),
            25..40 => self.addresses.pick(rng).map(|id| Operation::MoveAddress {
                id,
                street: format!("{} {}", rng.random_range(1..9999), STREETS.choose(rng).expect("non-empty")),
                city: CITIES.choose(rng).expect("non-empty").to_string(),
            }),
            40..85 => self.pick_open_order(rng, |_| true).and_then(|id| {
                let from = self.open_orders.get(&id).copied()?;
                next_order_status(from, rng.random_range(0..100)).map(|to| Operation::AdvanceOrder { id, from, to })
            }),
            _ => self.items.pick(rng).map(|id| Operation::ChangeQuantity { id, quantity: rng.random_range(1..10) }),
        }
    }

    fn draw_delete(&self, draw: u32, rng: &mut impl Rng) -> Option<Operation> {
        match draw {
            0..35 => self.items.pick(rng).map(Operation::DeleteItem),
            35..60 => self.addresses.pick(rng).map(Operation::DeleteAddress),
            60..90 => self.orders.pick(rng).map(Operation::DeleteOrder),
            _ => self.customers.pick(rng).map(Operation::DeleteCustomer),
        }
    }

    /// Records what a committed operation changed.
    pub fn apply(&mut self, op: &Operation) {
        match op {
            Operation::CreateCustomer { customer, addresses } => {
                self.customers.insert(customer.id);
                addresses.iter().for_each(|a| self.addresses.insert(a.id));
            }
            Operation::AddAddress(a) => self.addresses.insert(a.id),
            Operation::PlaceOrder { order, items } => {
                self.orders.insert(order.id);
                self.open_orders.insert(order.id, "pending");
                items.iter().for_each(|i| self.items.insert(i.id));
            }
            Operation::AddItem(i) => self.items.insert(i.id),
            Operation::AdvanceOrder { id, to, .. } => {
                if matches!(*to, "delivered" | "cancelled") {
                    self.open_orders.remove(id);
                } else {
                    self.open_orders.insert(*id, to);
                }
            }
            Operation::UpdateCustomer { .. } | Operation::MoveAddress { .. } | Operation::ChangeQuantity { .. } => {}
            Operation::DeleteItem(id) => {
                self.items.remove(id);
            }
            Operation::DeleteAddress(id) => {
                self.addresses.remove(id);
            }
            Operation::DeleteOrder(id) => {
                self.orders.remove(id);
                self.open_orders.remove(id);
            }
            Operation::DeleteCustomer(id) => {
                self.customers.remove(id);
            }
        }
    }

    /// Forgets a key the database no longer has (a cascade or concurrent delete).
    pub fn forget(&mut self, op: &Operation) {
        match op {
            Operation::UpdateCustomer { id, .. } | Operation::DeleteCustomer(id) => {
                self.customers.remove(id);
            }
            Operation::AddAddress(a) => {
                self.customers.remove(&a.customer_id);
            }
            Operation::PlaceOrder { order, .. } => {
                self.customers.remove(&order.customer_id);
            }
            Operation::AddItem(i) => {
                self.orders.remove(&i.order_id);
                self.open_orders.remove(&i.order_id);
            }
            Operation::MoveAddress { id, .. } | Operation::DeleteAddress(id) => {
                self.addresses.remove(id);
            }
            Operation::AdvanceOrder { id, .. } | Operation::DeleteOrder(id) => {
                self.orders.remove(id);
                self.open_orders.remove(id);
            }
            Operation::ChangeQuantity { id, .. } | Operation::DeleteItem(id) => {
                self.items.remove(id);
            }
            Operation::CreateCustomer { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn order_status_only_moves_forward_by_the_rules() {
        for from in ORDER_STATUSES {
            for draw in 0..100 {
                if let Some(to) = next_order_status(from, draw) {
                    let allowed: &[&str] = match from {
                        "pending" => &["paid", "cancelled"],
                        "paid" => &["shipped", "cancelled"],
                        "shipped" => &["delivered"],
                        _ => &[],
                    };
                    assert!(allowed.contains(&to), "{from} -> {to}");
                }
            }
        }
        assert_eq!(next_order_status("delivered", 0), None);
        assert_eq!(next_order_status("cancelled", 0), None);
    }

    #[test]
    fn draws_respect_the_registry_and_the_kind() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut registry = Registry::default();
        // Empty: everything falls back to creating customers.
        assert!(matches!(registry.draw(OpKind::Delete, &mut rng), Operation::CreateCustomer { .. }));
        for _ in 0..200 {
            let op = registry.draw(OpKind::Insert, &mut rng);
            assert_eq!(op.kind(), OpKind::Insert);
            registry.apply(&op);
        }
        assert!(registry.customers.len() > 10 && registry.orders.len() > 10);
        for _ in 0..200 {
            let op = registry.draw(OpKind::Update, &mut rng);
            assert_eq!(op.kind(), OpKind::Update, "{op:?}");
            if let Operation::AdvanceOrder { id, from, .. } = &op {
                assert_eq!(registry.open_orders.get(id), Some(from));
            }
            registry.apply(&op);
        }
        let before = registry.items.len();
        let mut deleted_items = 0;
        for _ in 0..50 {
            let op = registry.draw(OpKind::Delete, &mut rng);
            assert_eq!(op.kind(), OpKind::Delete);
            deleted_items += matches!(op, Operation::DeleteItem(_)) as usize;
            registry.apply(&op);
        }
        assert_eq!(registry.items.len(), before - deleted_items);
    }

    #[test]
    fn order_totals_are_the_sum_of_their_lines() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut registry = Registry::default();
        registry.customers.insert(Uuid::new_v4());
        for _ in 0..100 {
            if let Operation::PlaceOrder { order, items } = registry.draw(OpKind::Insert, &mut rng) {
                assert_eq!(order.total, items.iter().map(NewItem::line_total).sum::<Decimal>());
                assert!(items.iter().all(|i| i.order_id == order.id && i.quantity > 0));
            }
        }
    }
}
