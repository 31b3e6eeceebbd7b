//! Kubernetes quantities (`1Gi`, `500m`, `1e3`). What `Quantity` promises: it prints the
//! text it was written as, so a parsed quantity parses back to itself; `from_value` writes
//! a value so that it parses back to that value; `value()` rounds up and keeps the order;
//! `add` is the exact sum.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::config::quantity::Quantity;

/// Parses `text`, which printed `q`, and checks it is `q` again.
fn reparses(q: &Quantity) {
    let text = q.to_string();
    let again = Quantity::parse(&text)
        .unwrap_or_else(|e| panic!("{text:?}, printed by a quantity, does not parse: {e}"));
    assert_eq!(&again, q, "{text:?}");
    assert_eq!(again.value(), q.value(), "{text:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Two quantities: the text up to the first newline, and the rest.
    let (first, second) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(a) = Quantity::parse(first) else {
        return;
    };
    reparses(&a);
    assert_eq!(a.as_str(), first.trim());
    assert_eq!(a.is_zero(), a == Quantity::from_value(0));

    let v = a.value();
    let written = Quantity::from_value(v);
    reparses(&written);
    assert_eq!(written.value(), v);
    // value() rounds up: never below the quantity, less than one unit above it.
    if v != i64::MIN && v != i64::MAX {
        assert!(written >= a, "{first:?}: value {v} is below it");
        assert!(
            Quantity::from_value(v - 1) < a,
            "{first:?}: value {v} is a unit too high"
        );
    }

    let Ok(b) = Quantity::parse(second) else {
        return;
    };
    assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
    if a <= b {
        assert!(
            a.value() <= b.value(),
            "{first:?} <= {second:?} but values are not"
        );
    }
    let sum = a.add(&b);
    assert_eq!(sum, b.add(&a), "{first:?} + {second:?} is not commutative");
    // A sum of quantities whose values fit an i64 prints as text that parses back. (Far
    // larger ones may not: `add` writes `<nanos>n`, which parses only up to
    // i128::MAX / 10^9 nanos.)
    let fits = |q: &Quantity| q.value() > i64::MIN && q.value() < i64::MAX;
    if fits(&a) && fits(&b) {
        reparses(&sum);
    }
});
