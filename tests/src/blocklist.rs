//! Listings in the stack's test blocklists (`dnsbl.test` for addresses,
//! `dbl.test` for domains; see `tests/mailstack/up.sh`).
//!
//! dnsmasq reads every file of the stack's `MAILSTACK_DNSBL_DIR` as a
//! hosts file and reads it again by itself when one is added, changed or
//! removed: a [`Listing`] is one such file of the test's own, removed when
//! it is dropped (delisting), so tests in parallel do not see each other's
//! listings unless they look up the same name.

use crate::Stack;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// One listing, in force until dropped.
pub struct Listing {
    path: PathBuf,
}

impl Listing {
    /// Lists `address` in `dnsbl.test` with answer code `code` (the TXT
    /// reason, where the stack has one, is static in its dnsmasq.conf).
    pub fn address(test: &str, address: Ipv4Addr, code: Ipv4Addr) -> Listing {
        let o = address.octets();
        let name = format!("{}.{}.{}.{}.dnsbl.test", o[3], o[2], o[1], o[0]);
        Listing::write(test, &format!("{code} {name}\n"))
    }

    fn write(test: &str, hosts: &str) -> Listing {
        let dir = PathBuf::from(Stack::get().var("MAILSTACK_DNSBL_DIR"));
        let path = dir.join(format!("test-{test}"));
        let tmp = dir.join(format!(".test-{test}.tmp"));
        std::fs::write(&tmp, hosts).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
        Listing { path }
    }

    /// Delists now (the same as dropping it).
    pub fn remove(self) {}
}

impl Drop for Listing {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
