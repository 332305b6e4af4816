//! The one doubling back-off: the per-connection `Auth-Wait` schedule
//! ([`crate::authenticator::WaitPolicy`]) and the throttle's delay grow the
//! same way.

/// `base` seconds at step 1, doubled at each further step, capped at `max`
/// (never below `base`). The doubling stops growing after step 21, so no
/// step overflows.
pub(crate) fn doubling(base: u32, step: u32, max: u32) -> u32 {
    base.saturating_mul(1u32 << step.saturating_sub(1).min(20))
        .min(max.max(base))
}

#[cfg(test)]
mod tests {
    use super::doubling;

    #[test]
    fn doubles_then_caps() {
        let steps: Vec<_> = (1..=7).map(|s| doubling(1, s, 16)).collect();
        assert_eq!(steps, [1, 2, 4, 8, 16, 16, 16]);
        // Step 0 counts as the first; a cap below the base is the base.
        assert_eq!(doubling(3, 0, 16), 3);
        assert_eq!(doubling(5, 4, 2), 5);
        assert_eq!(doubling(u32::MAX, u32::MAX, u32::MAX), u32::MAX);
        assert_eq!(doubling(2, u32::MAX, u32::MAX), 2 << 20);
    }
}
