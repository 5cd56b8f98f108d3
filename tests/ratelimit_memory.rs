//! A flood of distinct addresses costs bounded memory, and the buckets go once they refill.
//! Its own test binary (one test, one process) so the resident set it measures is its own.
use classifier_api::client::AddrKey;
use classifier_api::ratelimit::{Budget, Client, RateLimitConfig, RateLimits, RateSetting};
use governor::clock::FakeRelativeClock;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

// As the server allocates.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADDRESSES: u32 = 1_000_000;

/// What the readme promises for a million addresses seen within one refill time (both budgets
/// on, so two buckets each). Measured: see the test's output (`--nocapture`).
const BOUND_MIB: u64 = 160;

fn resident_mib() -> u64 {
    classifier_api::rss::resident_kib().expect("Linux").0 / 1024
}

#[test]
fn a_million_addresses_stay_under_the_documented_size_and_are_dropped_when_refilled() {
    classifier_api::rss::lean_mimalloc();
    let rate = |s: &str| s.parse::<RateSetting>().unwrap().0;
    let clock = FakeRelativeClock::default();
    let limits = RateLimits::with_clock(
        RateLimitConfig {
            all: rate("600/min,burst=100"),
            cold: rate("30/min"),
            ..Default::default()
        },
        &clock,
    );
    let before = resident_mib();
    for i in 0..ADDRESSES {
        // Spread over the whole space, as a flood of spoofed or rented addresses would be.
        let ip = IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761)));
        let client = Client::Addr(AddrKey::from(ip));
        limits.check(Budget::All, &client).unwrap();
        limits.check(Budget::Cold, &client).unwrap();
    }
    assert_eq!(limits.tracked(), 2 * ADDRESSES as usize);
    let grown = resident_mib().saturating_sub(before);
    eprintln!(
        "{ADDRESSES} addresses, 2 budgets: +{grown} MiB resident ({} bytes per address)",
        grown * 1024 * 1024 / u64::from(ADDRESSES)
    );
    assert!(grown < BOUND_MIB, "+{grown} MiB");

    // The every-request bucket is full again after 0.1 s, the cold one after 2 s; governor keeps
    // each one interval longer.
    clock.advance(Duration::from_millis(250));
    limits.sweep();
    assert_eq!(
        limits.tracked(),
        ADDRESSES as usize,
        "the cold buckets are not full yet"
    );
    clock.advance(Duration::from_secs(4));
    limits.sweep();
    assert_eq!(limits.tracked(), 0);
    eprintln!(
        "after the sweep: +{} MiB resident",
        resident_mib().saturating_sub(before)
    );
}
