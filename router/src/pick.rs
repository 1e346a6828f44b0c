//! Choosing a dyno: the power of two random choices. Two distinct dynos drawn at random, the
//! one with fewer requests in flight wins. It needs no coordination (Heroku's routers pick
//! at random) yet avoids piling requests on a slow dyno, which pure random choice does.

use rand::Rng;

/// Index of the dyno to try among `n`, skipping the indexes in `tried` (dynos whose connect
/// already failed for this request); `None` when every one was tried. `load(i)` is dyno
/// `i`'s in-flight count.
pub(crate) fn two_choices(
    n: usize,
    tried: &[usize],
    load: impl Fn(usize) -> usize,
    rng: &mut impl Rng,
) -> Option<usize> {
    if tried.is_empty() {
        return pick_among(n, |k| k, &load, rng);
    }
    let left: Vec<usize> = (0..n).filter(|i| !tried.contains(i)).collect();
    pick_among(left.len(), |k| left[k], &load, rng)
}

fn pick_among(
    n: usize,
    index: impl Fn(usize) -> usize,
    load: &impl Fn(usize) -> usize,
    rng: &mut impl Rng,
) -> Option<usize> {
    match n {
        0 => None,
        1 => Some(index(0)),
        _ => {
            let a = rng.gen_range(0..n);
            let mut b = rng.gen_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (index(a), index(b));
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn none_and_single() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(two_choices(0, &[], |_| 0, &mut rng), None);
        assert_eq!(two_choices(1, &[], |_| 7, &mut rng), Some(0));
        assert_eq!(two_choices(1, &[0], |_| 0, &mut rng), None);
    }

    #[test]
    fn of_two_the_less_loaded_always_wins() {
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..100 {
            assert_eq!(two_choices(2, &[], |i| [5, 1][i], &mut rng), Some(1));
        }
    }

    #[test]
    fn the_most_loaded_of_many_is_never_picked_and_all_others_are() {
        let mut rng = StdRng::seed_from_u64(3);
        let loads = [0, 0, 0, 9];
        let mut seen = [0; 4];
        for _ in 0..1000 {
            let i = two_choices(4, &[], |i| loads[i], &mut rng).expect("a pick");
            seen[i] += 1;
        }
        assert_eq!(seen[3], 0);
        assert!(seen[..3].iter().all(|&c| c > 100), "{seen:?}");
    }

    #[test]
    fn tried_dynos_are_skipped() {
        let mut rng = StdRng::seed_from_u64(4);
        for _ in 0..100 {
            let i = two_choices(3, &[0, 2], |_| 0, &mut rng);
            assert_eq!(i, Some(1));
        }
        assert_eq!(two_choices(3, &[0, 1, 2], |_| 0, &mut rng), None);
    }
}
