//! MongoDB target: `customers`, `addresses`, `orders` with `items` embedded.

mod config;
mod service;
mod sink;

pub use config::MongoConfig;
pub use service::{class_of, class_of_code};
pub use sink::{MongoSink, collection_name};
