pub mod clock;
pub mod domain;
pub mod model;
pub mod preprocess;
