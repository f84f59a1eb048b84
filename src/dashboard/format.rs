//! How the dashboard writes times and durations, in one place so every page reads alike.

/// A length of time as people read it: 0, 840 ms, 2 s, 3.2 s, 4 min 05 s, 2 h 10 min.
pub fn duration(ms: i64) -> String {
    match ms.max(0) {
        0 => "0".into(),
        ms @ 1..1_000 => format!("{ms} ms"),
        ms @ 1_000..60_000 => {
            let seconds = ms as f64 / 1000.0;
            if ms % 1000 == 0 { format!("{seconds:.0} s") } else { format!("{seconds:.1} s") }
        }
        ms @ 60_000..3_600_000 => format!("{} min {:02} s", ms / 60_000, ms % 60_000 / 1000),
        ms => format!("{} h {:02} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// How long something took: like [`duration`], but a zero reads "<1 ms" (stored times are to the
/// microsecond; a zero is a fast call, not a missing figure).
pub fn took(ms: i64) -> String {
    if ms <= 0 { "<1 ms".into() } else { duration(ms) }
}

/// An API timestamp (naive UTC, ISO 8601) to the second, with a space: 2026-12-02 14:27:31.
pub fn timestamp(iso: &str) -> String {
    iso.get(..19).unwrap_or(iso).replace('T', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(840), "840 ms");
        assert_eq!(duration(3_240), "3.2 s");
        assert_eq!(duration(2_000), "2 s");
        assert_eq!(duration(245_000), "4 min 05 s");
        assert_eq!(duration(125_000), "2 min 05 s");
        assert_eq!(duration(7_800_000), "2 h 10 min");
        assert_eq!(took(0), "<1 ms");
        assert_eq!(timestamp("2026-12-02T14:27:31.730354"), "2026-12-02 14:27:31");
    }
}
