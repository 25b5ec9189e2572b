//! Request parsing under arbitrary bodies: the first byte picks the endpoint (chat or
//! completions), the rest is the body. Any panic — including a 5xx for a client's body, which
//! the harness turns into one — is a finding.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use switchyard_frontend::fuzzing::{Endpoint, Harness};

static HARNESS: LazyLock<Harness> = LazyLock::new(Harness::new);

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let endpoint = if first & 1 == 0 { Endpoint::Chat } else { Endpoint::Completions };
    let _ = HARNESS.run(endpoint, body);
});
