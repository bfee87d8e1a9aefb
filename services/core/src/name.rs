//! Redis keys and NATS subjects are built on every request; writing them with `itoa` instead of
//! `format!` skips the formatting machinery (about a thousand instructions a name).

/// `prefix`, `middle`, then each number preceded by `separator`, then `tail`.
pub(crate) fn join(
    prefix: &str,
    middle: &str,
    separator: char,
    numbers: &[u64],
    tail: &str,
) -> String {
    let mut name =
        String::with_capacity(prefix.len() + middle.len() + tail.len() + 21 * numbers.len());
    name.push_str(prefix);
    name.push_str(middle);
    let mut digits = itoa::Buffer::new();
    for number in numbers {
        name.push(separator);
        name.push_str(digits.format(*number));
    }
    name.push_str(tail);
    name
}

#[cfg(test)]
mod tests {
    #[test]
    fn joins_like_format_would() {
        assert_eq!(
            super::join("p", ".v1.x", '.', &[0, 42, u64::MAX], ".*"),
            format!("p.v1.x.0.42.{}.*", u64::MAX)
        );
        assert_eq!(super::join("t:", "seq", ':', &[], ""), "t:seq");
    }
}
