//! OpenAI's API shapes: request bodies (parsed once, typed), their validation, and the
//! response and stream-chunk bodies.

pub(crate) mod params;
pub(crate) mod request;
pub(crate) mod response;
