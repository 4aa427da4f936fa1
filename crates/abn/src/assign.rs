//! Which version a user gets: weighted rendezvous hashing, exactly proportional to the
//! weights, sticky, and the same in every process.
//!
//! The algorithm, so that an SDK can reproduce it:
//!
//! 1. For each version `i` with weight `w_i > 0`, hash the bytes
//!    `le64(len(user)) ‖ user ‖ le64(len(signature_i)) ‖ signature_i ‖ le32(i)`
//!    with XXH3-64 and the configured seed (default 0): `h_i`.
//! 2. Map the top 53 bits to a uniform number in (0, 1): `u_i = ((h_i >> 11) + 0.5) / 2^53`.
//! 3. Score `s_i = -w_i / ln(u_i)`; the user gets the version with the highest score, the
//!    lower index on a tie. Versions of weight 0 are never chosen.
//!
//! `-ln(u_i) / w_i` is exponentially distributed with rate `w_i`, so version `i` has the
//! smallest one (the highest score) with probability `w_i / Σw`: exactly proportional.
//! Raising one version's weight raises only its own score, so users only move *to* it.
//! A version's signature changes with its resources' specs, which reshuffles the users of
//! that version only; weights and readiness changes move as few users as possible.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The hash of step 1.
pub fn hash(user: &str, signature: &str, index: u32, seed: u64) -> u64 {
    let mut buf = Vec::with_capacity(20 + user.len() + signature.len());
    buf.extend_from_slice(&(user.len() as u64).to_le_bytes());
    buf.extend_from_slice(user.as_bytes());
    buf.extend_from_slice(&(signature.len() as u64).to_le_bytes());
    buf.extend_from_slice(signature.as_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    xxh3_64_with_seed(&buf, seed)
}

/// The score of step 3 (higher wins).
pub fn score(weight: u32, hash: u64) -> f64 {
    let u = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(weight as f64) / u.ln()
}

/// The version `user` gets among versions with these weights and signatures (same length),
/// or `None` when every weight is 0.
pub fn choose(user: &str, weights: &[u32], signatures: &[String], seed: u64) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, (&w, sig)) in weights.iter().zip(signatures).enumerate() {
        if w == 0 {
            continue;
        }
        let s = score(w, hash(user, sig, i as u32, seed));
        // Strictly greater: a tie keeps the lower index.
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sigs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("sig{i}")).collect()
    }

    /// Shares of `users` simulated users, in percent.
    fn shares(weights: &[u32], users: u32) -> Vec<f64> {
        let s = sigs(weights.len());
        let mut counts = vec![0u32; weights.len()];
        for u in 0..users {
            let user = format!("user-{u}");
            let i = choose(&user, weights, &s, 0).expect("a version has weight");
            counts[i] += 1;
        }
        counts
            .iter()
            .map(|&c| 100.0 * c as f64 / users as f64)
            .collect()
    }

    #[test]
    fn a_million_users_land_within_three_tenths_of_a_point_of_the_weights() {
        for weights in [
            vec![50, 50],
            vec![80, 20],
            vec![90, 10],
            vec![99, 1],
            vec![60, 30, 10],
        ] {
            let got = shares(&weights, 1_000_000);
            let total: u32 = weights.iter().sum();
            for (i, &w) in weights.iter().enumerate() {
                let want = 100.0 * w as f64 / total as f64;
                assert!(
                    (got[i] - want).abs() <= 0.3,
                    "weights {weights:?}: version {i} got {:.3}% of users, want {want}% ± 0.3",
                    got[i]
                );
            }
        }
    }

    #[test]
    fn raising_the_candidates_weight_moves_no_user_away_from_it() {
        let s = sigs(2);
        for u in 0..200_000 {
            let user = format!("user-{u}");
            let before = choose(&user, &[80, 20], &s, 0);
            let after = choose(&user, &[50, 50], &s, 0);
            if before == Some(1) {
                assert_eq!(after, Some(1), "{user} left the candidate");
            }
        }
    }

    #[test]
    fn the_answer_depends_only_on_its_inputs() {
        // Fixed vectors: another process, another machine or an SDK must agree with them.
        // They were computed by an independent implementation of the module docs' algorithm
        // (Python with the `xxhash` package), not by this code.
        let s = vec!["a1b2".to_string(), "c3d4".to_string()];
        let picks: Vec<usize> = (0..16)
            .map(|u| choose(&format!("u{u}"), &[1, 1], &s, 0).expect("weights"))
            .collect();
        assert_eq!(picks, PICKS);
        let picks_3_1: Vec<usize> = (0..16)
            .map(|u| choose(&format!("u{u}"), &[3, 1], &s, 0).expect("weights"))
            .collect();
        assert_eq!(picks_3_1, PICKS_3_1);
        assert_eq!(hash("", "", 0, 0), HASH_EMPTY);
        // The seed changes the answers.
        let seeded: Vec<usize> = (0..16)
            .map(|u| choose(&format!("u{u}"), &[1, 1], &s, 7).expect("weights"))
            .collect();
        assert_ne!(seeded, PICKS);
    }

    const PICKS: [usize; 16] = [1, 0, 0, 0, 1, 1, 1, 0, 1, 0, 1, 1, 0, 0, 1, 0];
    const PICKS_3_1: [usize; 16] = [1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    const HASH_EMPTY: u64 = 1618829573223651249;

    #[test]
    fn zero_weights_are_never_chosen_and_all_zero_is_none() {
        let s = sigs(3);
        for u in 0..1000 {
            let user = format!("{u}");
            assert_eq!(choose(&user, &[0, 5, 0], &s, 0), Some(1));
        }
        assert_eq!(choose("x", &[0, 0], &sigs(2), 0), None);
        assert_eq!(choose("x", &[], &[], 0), None);
    }

    #[test]
    fn the_encoding_is_unambiguous() {
        assert_ne!(hash("ab", "c", 0, 0), hash("a", "bc", 0, 0));
        assert_ne!(hash("a", "b1", 0, 0), hash("a", "b", 10, 0));
    }
}
