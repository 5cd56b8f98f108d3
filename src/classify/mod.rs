//! Classifying an image: the use case ([`ClassifyService`]) and single flight in front of the
//! cache ([`flight`]).
pub mod flight;
mod service;

pub use flight::{CacheOutcome, SingleFlight};
pub use service::{Answer, ClassifyService};
