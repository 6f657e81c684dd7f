//! The API: `Canary`, `MetricTemplate` and `AlertProvider` (group `serin.dev`, version
//! `v1beta1`), their status, and the validation shared by admission, the controller and the CLI.

pub mod canary;
pub mod crds;
pub mod duration;
pub mod status;
pub mod template;
pub mod validate;

pub use canary::*;
pub use status::*;
pub use template::*;
pub use validate::{FieldError, validate_canary};
