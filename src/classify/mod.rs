//! Classifying an image, in the order a request meets the parts: [`ClassifyService`] (the use
//! case: admission, cache, statistics), [`flight`] (single flight in front of the cache), then on
//! a miss `pipeline`, which chains `fetch` (downloads the image behind an untrusted URL), `image`
//! (decodes it into the model input) and `model` (MobileNet on its own thread), without caching.
mod errors;
pub mod fetch;
pub mod flight;
pub mod image;
pub mod model;
pub mod pipeline;
mod service;

pub use flight::{CacheOutcome, SingleFlight};
pub use service::{Admission, Answer, ClassifyService};
