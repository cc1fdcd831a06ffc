//! Counter sets defined once: [`counters!`](crate::counters) emits a struct of `u64` fields with
//! its serde form, the fields' names and kinds in declaration order, conversions to and from an
//! array (for publishing through atomics) and a field-wise sum. Renderers iterate
//! [`iter`](WorkerCounters::iter) instead of keeping their own lists of names.
//!
//! To add a counter, add one line (and its doc comment) to the invocation:
//!
//! ```text
//! counters! {
//!     pub struct WorkerCounters {
//!         /// Frames received.
//!         rx: Counter,
//!         /// Flows in the table now.
//!         active_flows: Gauge,
//!         /// The new one.
//!         my_new_counter: Counter,
//!     }
//! }
//! ```
//!
//! Its name is the field's name: the `stats` answer (`meshctl --format json stats`) and
//! Prometheus (`meshd_<name>_total` for a counter, `meshd_<name>` for a gauge) pick it up with no
//! other change. The `meshctl stats` table shows the columns `ctl/src/cli/stats.rs` picks.
//!
//! [`WorkerCounters`]: crate::proto::WorkerCounters

use serde::{Deserialize, Serialize};

/// How a value behaves over time (Prometheus' `# TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Only grows (until a restart).
    Counter,
    /// Goes up and down (a level, such as the number of flows).
    Gauge,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// Defines a counter set; see the [module documentation](crate::counters).
#[macro_export]
macro_rules! counters {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident : $kind:ident ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        $vis struct $name {
            $( $(#[$fmeta])* pub $field: u64, )*
        }

        impl $name {
            /// Number of counters.
            pub const FIELDS: usize = [$(stringify!($field)),*].len();

            /// The counters' names, in declaration order.
            pub const NAMES: [&'static str; Self::FIELDS] = [$(stringify!($field)),*];

            /// The counters' kinds, in declaration order.
            pub const KINDS: [$crate::counters::Kind; Self::FIELDS] =
                [$($crate::counters::Kind::$kind),*];

            /// The values, in declaration order.
            pub fn to_array(&self) -> [u64; Self::FIELDS] {
                [$(self.$field),*]
            }

            /// The inverse of [`Self::to_array`].
            pub fn from_array(a: &[u64; Self::FIELDS]) -> Self {
                let [$($field),*] = *a;
                Self { $($field),* }
            }

            /// Adds another set field by field (for totals).
            pub fn add(&mut self, o: &Self) {
                $( self.$field += o.$field; )*
            }

            /// Every counter: name, kind, value, in declaration order.
            pub fn iter(&self) -> impl Iterator<Item = (&'static str, $crate::counters::Kind, u64)> {
                let values = self.to_array();
                Self::NAMES
                    .into_iter()
                    .zip(Self::KINDS)
                    .zip(values)
                    .map(|((n, k), v)| (n, k, v))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    crate::counters! {
        /// A test set.
        struct Two {
            /// One.
            a: Counter,
            b: Gauge,
        }
    }

    #[test]
    fn one_definition_gives_names_kinds_arrays_and_sums() {
        use super::Kind;
        let mut t = Two { a: 1, b: 2 };
        assert_eq!(Two::NAMES, ["a", "b"]);
        assert_eq!(Two::KINDS, [Kind::Counter, Kind::Gauge]);
        assert_eq!(Two::from_array(&t.to_array()), t);
        t.add(&Two { a: 10, b: 20 });
        assert_eq!(
            t.iter().collect::<Vec<_>>(),
            [("a", Kind::Counter, 11), ("b", Kind::Gauge, 22)]
        );
        let j = serde_json::to_value(&t).unwrap();
        assert_eq!(j, serde_json::json!({"a": 11, "b": 22}));
        let back: Two = serde_json::from_value(serde_json::json!({"a": 3})).unwrap();
        assert_eq!(back, Two { a: 3, b: 0 });
    }
}
