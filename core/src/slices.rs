//! Where to cut user ids into slices of about equal work, for the counting queries that run
//! one slice per parallel worker: the gather waits for the largest slice, so slices of
//! equal work finish together. The work of a slice is estimated from equal-depth
//! histograms (PostgreSQL's `pg_stats.histogram_bounds`) of the tables the query reads,
//! each weighted by the rows it reads there times their cost per row. User ids compare
//! bytewise (their columns are `COLLATE "C"`).

/// One table's share of a query's work.
pub struct Work<'a> {
    /// Equal-depth histogram bounds of the table's user ids, ascending.
    pub bounds: &'a [String],
    /// Rows the query reads there times their cost per row (any unit, the same for all).
    pub weight: f64,
}

/// The fraction of the histogram's rows whose id is below `id`: exact at a bound, the
/// middle of the bucket in between.
fn fraction_below(bounds: &[String], id: &str) -> f64 {
    let buckets = (bounds.len() - 1) as f64;
    let below = bounds.partition_point(|b| b.as_bytes() < id.as_bytes());
    if below == 0 {
        return 0.0;
    }
    if below == bounds.len() {
        return 1.0;
    }
    if bounds[below].as_bytes() == id.as_bytes() {
        below as f64 / buckets
    } else {
        (below as f64 - 0.5) / buckets
    }
}

/// `slices - 1` ids, strictly increasing, that cut the work into `slices` parts of about
/// equal size; fewer when the histograms are too short to tell (then the caller runs
/// fewer slices). Histograms shorter than two bounds per slice, or of no weight, are
/// left out; none left gives no cut.
pub fn cut(work: &[Work<'_>], slices: usize) -> Vec<String> {
    let used: Vec<&Work<'_>> = work
        .iter()
        .filter(|w| w.weight > 0.0 && w.weight.is_finite() && w.bounds.len() >= 2 * slices)
        .collect();
    let total: f64 = used.iter().map(|w| w.weight).sum();
    if used.is_empty() || slices < 2 {
        return Vec::new();
    }
    let mut candidates: Vec<&String> = used.iter().flat_map(|w| w.bounds.iter()).collect();
    candidates.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    candidates.dedup();
    let done = |id: &str| -> f64 {
        used.iter()
            .map(|w| w.weight * fraction_below(w.bounds, id))
            .sum::<f64>()
            / total
    };
    let done_at: Vec<f64> = candidates.iter().map(|c| done(c)).collect();
    let mut bounds: Vec<String> = Vec::new();
    for i in 1..slices {
        let target = i as f64 / slices as f64;
        let best = (0..candidates.len())
            .filter(|&k| done_at[k] > 0.0 && done_at[k] < 1.0)
            .min_by(|&x, &y| {
                (done_at[x] - target)
                    .abs()
                    .total_cmp(&(done_at[y] - target).abs())
            });
        if let Some(k) = best {
            let id = candidates[k];
            if bounds
                .last()
                .is_none_or(|last| last.as_bytes() < id.as_bytes())
            {
                bounds.push(id.clone());
            }
        }
    }
    bounds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal-depth bounds of ids `prefix` + 0..n, zero-padded, `points` of them.
    fn histogram(prefix: &str, from: usize, to: usize, points: usize) -> Vec<String> {
        (0..points)
            .map(|i| format!("{prefix}{:07}", from + (to - from) * i / (points - 1)))
            .collect()
    }

    #[test]
    fn one_table_is_cut_at_its_median() {
        let ids = histogram("u", 0, 1_000_000, 101);
        let bounds = cut(
            &[Work {
                bounds: &ids,
                weight: 1.0,
            }],
            2,
        );
        assert_eq!(bounds, vec!["u0500000".to_string()]);
    }

    #[test]
    fn heavier_events_move_the_cut_towards_them() {
        // Assignments spread over ids 0..1M; events over 0..1.2M, but the ids they add sort
        // low (as "u1000001".. do among "u1".."u999999"): here they are put at the start.
        let assignments = histogram("u", 200_000, 1_200_000, 101);
        let events = histogram("u", 0, 1_200_000, 101);
        let only_assignments = cut(
            &[Work {
                bounds: &assignments,
                weight: 1.0,
            }],
            2,
        );
        assert_eq!(only_assignments, vec!["u0700000".to_string()]);
        let both = cut(
            &[
                Work {
                    bounds: &assignments,
                    weight: 1.0,
                },
                Work {
                    bounds: &events,
                    weight: 4.0,
                },
            ],
            2,
        );
        // Work below the cut x (in millions): (x - 0.2) * 1 + x / 1.2 * 4 = 5 / 2 at x = 0.623.
        let cut_at: usize = both[0][1..].parse().unwrap();
        assert!((620_000..=645_000).contains(&cut_at), "{both:?}");
    }

    #[test]
    fn several_slices_increase_strictly() {
        let a = histogram("a", 0, 1_000, 101);
        let b = histogram("b", 0, 1_000, 101);
        let bounds = cut(
            &[
                Work {
                    bounds: &a,
                    weight: 1.0,
                },
                Work {
                    bounds: &b,
                    weight: 1.0,
                },
            ],
            4,
        );
        assert_eq!(bounds.len(), 3);
        assert!(bounds.windows(2).all(|w| w[0].as_bytes() < w[1].as_bytes()));
        // Half the work is in a..., half in b...: the middle cut is where a ends or b starts.
        assert!(
            ["a0001000", "b0000000"].contains(&bounds[1].as_str()),
            "{bounds:?}"
        );
    }

    #[test]
    fn short_or_weightless_histograms_give_no_cut() {
        let short = histogram("u", 0, 10, 3);
        assert!(cut(
            &[Work {
                bounds: &short,
                weight: 1.0
            }],
            2
        )
        .is_empty());
        let ids = histogram("u", 0, 1_000, 101);
        assert!(cut(
            &[Work {
                bounds: &ids,
                weight: 0.0
            }],
            2
        )
        .is_empty());
        assert!(cut(
            &[Work {
                bounds: &ids,
                weight: 1.0
            }],
            1
        )
        .is_empty());
        assert!(cut(&[], 2).is_empty());
    }
}
