//! The classify request's stages, in the order a request meets them: `fetch` downloads the image
//! behind an untrusted URL, `image` decodes it into the model input, `model` runs MobileNet on its
//! own thread, and `pipeline` chains the three (without caching).
pub mod fetch;
pub mod image;
pub mod model;
pub mod pipeline;
