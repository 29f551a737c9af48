//! Kubernetes quantities (`512Mi`, `1.5G`, `2e9`) as whole bytes, for settings the operator
//! writes in units of its own (Redis's `maxmemory`). Only reading; the apiserver's CEL rules have
//! already refused what is not a quantity. Pure.

/// The bytes `quantity` stands for, rounded down; `None` when it is not a non-negative quantity
/// or exceeds `u64`.
pub fn bytes(quantity: &str) -> Option<u64> {
    let s = quantity.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    let (binary, decimal): (u32, i32) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        exponent => (0, exponent.strip_prefix(['e', 'E'])?.parse().ok()?),
    };
    let mantissa: u128 = format!("{whole}{fraction}").parse().ok()?;
    let scaled = mantissa.checked_mul(1u128 << binary)?;
    let exponent = decimal.checked_sub(i32::try_from(fraction.len()).ok()?)?;
    let power = 10u128.checked_pow(exponent.unsigned_abs())?;
    let value = if exponent >= 0 {
        scaled.checked_mul(power)?
    } else {
        scaled / power
    };
    u64::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn every_suffix_and_form_reads_as_bytes() {
        let cases = [
            ("0", Some(0)),
            ("1024", Some(1024)),
            ("512Mi", Some(512 << 20)),
            ("1Gi", Some(1 << 30)),
            ("1.5Gi", Some(3 << 29)),
            ("2Ei", Some(2 << 60)),
            ("1k", Some(1000)),
            ("1.5G", Some(1_500_000_000)),
            ("3T", Some(3_000_000_000_000)),
            ("1E", Some(1_000_000_000_000_000_000)),
            ("2e9", Some(2_000_000_000)),
            ("2E3", Some(2000)),
            ("+64Mi", Some(64 << 20)),
            (".5Ki", Some(512)),
            ("5.", Some(5)),
            ("1500m", Some(1)),
            ("1e-3", Some(0)),
        ];
        for (quantity, expected) in cases {
            assert_eq!(bytes(quantity), expected, "{quantity}");
        }
    }

    #[test]
    fn what_is_not_a_non_negative_quantity_in_range_is_none() {
        for quantity in [
            "", ".", "-1Gi", "1Xi", "1.2.3", "Mi", "1e", "16Ei", "1e400", "1 Gi",
        ] {
            assert_eq!(bytes(quantity), None, "{quantity}");
        }
    }
}
