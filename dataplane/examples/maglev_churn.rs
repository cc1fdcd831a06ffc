//! How many slots of a Maglev table move when one backend of N leaves: the survey behind the
//! disruption bound `balance::maglev`'s tests assert (1/N + 2.5 %). For random sets of task
//! ids it removes backends and prints, per N, the mean and the worst extra churn (the moved
//! share of the table above the 1/N the removal must move).
//!
//! `cargo run --release -p dataplane --example maglev_churn [SETS] [SEED]` (100 sets and
//! seed 1 unless given; a few minutes at 100).
use dataplane::balance::maglev::{Backend, Maglev, TABLE_SIZE};

/// splitmix64: reproducible ids from a seed, no dependency.
fn next(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn ids(m: &Maglev, b: &[Backend]) -> Vec<u64> {
    (0..TABLE_SIZE as u64)
        .map(|h| m.lookup(h).map_or(0, |i| b[usize::from(i)].id))
        .collect()
}

#[allow(clippy::cast_precision_loss)]
fn main() {
    let mut args = std::env::args().skip(1);
    let sets: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let mut seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    println!(
        "N     removals  mean extra  worst extra  (extra: moved share of the table above 1/N)"
    );
    // Few backends: remove each in turn. More: remove one, chosen at random.
    let few = 2..=8usize;
    let many = [20usize, 100, 150, 300, 1000];
    for n in few.chain(many) {
        let (mut sum, mut worst, mut count) = (0.0f64, 0.0f64, 0usize);
        for _ in 0..sets {
            let all: Vec<Backend> = (0..n)
                .map(|_| Backend {
                    id: next(&mut seed),
                    weight: 1,
                })
                .collect();
            let before = ids(&Maglev::build(&all), &all);
            let picks: Vec<usize> = if n <= 8 {
                (0..n).collect()
            } else {
                vec![usize::try_from(next(&mut seed) % n as u64).unwrap_or(0)]
            };
            for r in picks {
                let mut fewer = all.clone();
                fewer.remove(r);
                let after = ids(&Maglev::build(&fewer), &fewer);
                let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
                let extra = moved as f64 / TABLE_SIZE as f64 - 1.0 / n as f64;
                sum += extra;
                worst = worst.max(extra);
                count += 1;
            }
        }
        println!(
            "{n:<5} {count:>8}  {:>9.3}%  {:>10.3}%",
            100.0 * sum / count as f64,
            100.0 * worst
        );
    }
}
