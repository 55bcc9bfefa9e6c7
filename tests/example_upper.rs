//! The custom-protocol example runs under every model, framed by lines whatever the
//! reads.

mod common;

#[path = "../examples/upper.rs"]
#[allow(dead_code)]
mod upper;

use std::io::Write;
use std::net::Shutdown;

use common::*;
use multiclient::model::Limits;

#[test]
fn upper_echo_runs_under_every_model() {
    for model in MODELS {
        let srv = start(model, Limits::default(), upper::Upper);
        let mut c = connect(srv.addr());
        c.write_all(b"hello\nwor").unwrap();
        assert_eq!(read_n(&mut c, 6), b"HELLO\n");
        c.write_all(b"ld\n").unwrap();
        assert_eq!(read_n(&mut c, 6), b"WORLD\n");
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&mut c), b"", "{model:?}");
    }
}
