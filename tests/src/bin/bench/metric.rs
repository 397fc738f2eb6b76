//! One measured quantity across contenders and rounds, and its summary:
//! median, min and max over rounds, and the median of round-by-round
//! ratios to a baseline contender.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::{stats, topology::Contender};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

impl Better {
    pub fn word(self) -> &'static str {
        match self {
            Better::Higher => "higher is better",
            Better::Lower => "lower is better",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Metric {
    /// Stable key for `results.json`, e.g. `tcp.1-stream.forward`.
    pub id: String,
    pub scenario: &'static str,
    pub title: String,
    pub unit: &'static str,
    pub decimals: usize,
    pub better: Better,
    /// Whose rounds the ratios divide by.
    pub baseline: Contender,
    /// Table rows, in order; a contender without samples prints `n/a`.
    pub contenders: Vec<Contender>,
    /// One value per measured round; `None` where that run failed.
    pub rounds: BTreeMap<Contender, Vec<Option<f64>>>,
    /// Every single observation, pooled over rounds (plugin timing),
    /// summarised with percentiles.
    pub pooled: BTreeMap<Contender, Vec<f64>>,
    /// `(row, counterpart)`: rows also compared, round by round, with
    /// another row than the baseline (ours against its classic equivalent).
    pub counterparts: Vec<(Contender, Contender)>,
}

/// A row's paired ratio to its counterpart.
#[derive(Debug, Clone, Copy)]
pub struct Versus {
    pub counterpart: Contender,
    pub ratio: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
}

/// What a table row shows.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub rounds: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Median of the per-round ratios to the baseline.
    pub ratio: Option<f64>,
    pub ratio_min: Option<f64>,
    pub ratio_max: Option<f64>,
}

impl Metric {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        scenario: &'static str,
        id: &str,
        title: &str,
        unit: &'static str,
        decimals: usize,
        better: Better,
        baseline: Contender,
        rounds: usize,
    ) -> Self {
        Self {
            id: format!("{scenario}.{id}"),
            scenario,
            title: title.to_string(),
            unit,
            decimals,
            better,
            baseline,
            contenders: Contender::ALL.to_vec(),
            rounds: Contender::ALL
                .iter()
                .map(|c| (*c, vec![None; rounds]))
                .collect(),
            pooled: BTreeMap::new(),
            counterparts: Vec::new(),
        }
    }

    /// The metric with `rows` as its table rows instead of
    /// [`Contender::ALL`].
    pub fn with_rows(mut self, rows: &[Contender]) -> Self {
        let rounds = self.rounds.values().next().map_or(0, Vec::len);
        self.contenders = rows.to_vec();
        self.rounds = rows.iter().map(|c| (*c, vec![None; rounds])).collect();
        self
    }

    /// `contender`'s median per-round ratio to its counterpart, if it has
    /// one and they ran in a common round.
    pub fn versus(&self, contender: Contender) -> Option<Versus> {
        let (_, counterpart) = self.counterparts.iter().find(|(c, _)| *c == contender)?;
        let ratios =
            stats::paired_ratios(self.rounds.get(&contender)?, self.rounds.get(counterpart)?);
        Some(Versus {
            counterpart: *counterpart,
            ratio: stats::median(&ratios)?,
            ratio_min: stats::min(&ratios)?,
            ratio_max: stats::max(&ratios)?,
        })
    }

    /// The value of `contender` in measured round `round` (0-based).
    pub fn record(&mut self, contender: Contender, round: usize, value: Option<f64>) {
        if let Some(slot) = self
            .rounds
            .get_mut(&contender)
            .and_then(|rounds| rounds.get_mut(round))
        {
            *slot = value;
        }
    }

    /// Adds single observations to the pool of `contender`.
    pub fn pool(&mut self, contender: Contender, values: &[f64]) {
        self.pooled
            .entry(contender)
            .or_default()
            .extend_from_slice(values);
    }

    pub fn summary(&self, contender: Contender) -> Option<Summary> {
        let rounds = self.rounds.get(&contender)?;
        let values: Vec<f64> = rounds.iter().flatten().copied().collect();
        let ratios = match self.rounds.get(&self.baseline) {
            Some(reference) if contender != self.baseline => {
                stats::paired_ratios(rounds, reference)
            }
            _ => Vec::new(),
        };
        Some(Summary {
            rounds: values.len(),
            median: stats::median(&values)?,
            min: stats::min(&values)?,
            max: stats::max(&values)?,
            ratio: if contender == self.baseline {
                Some(1.0)
            } else {
                stats::median(&ratios)
            },
            ratio_min: stats::min(&ratios),
            ratio_max: stats::max(&ratios),
        })
    }

    pub fn to_json(&self) -> Value {
        let mut contenders = serde_json::Map::new();
        for contender in &self.contenders {
            let summary = self.summary(*contender);
            let mut entry = json!({
                "rounds": self.rounds.get(contender),
                "summary": summary.map(|s| json!({
                    "rounds": s.rounds,
                    "median": s.median,
                    "min": s.min,
                    "max": s.max,
                    "ratio": s.ratio,
                    "ratio_min": s.ratio_min,
                    "ratio_max": s.ratio_max,
                })),
            });
            if let Some(versus) = self.versus(*contender) {
                entry["vs_counterpart"] = json!({
                    "counterpart": versus.counterpart.name(),
                    "ratio": versus.ratio,
                    "ratio_min": versus.ratio_min,
                    "ratio_max": versus.ratio_max,
                });
            }
            if let Some(pooled) = self.pooled.get(contender) {
                entry["samples"] = json!(pooled);
                entry["p50"] = json!(stats::percentile(pooled, 50.0));
                entry["p99"] = json!(stats::percentile(pooled, 99.0));
            }
            contenders.insert(contender.name().to_string(), entry);
        }
        json!({
            "id": self.id,
            "scenario": self.scenario,
            "title": self.title,
            "unit": self.unit,
            "better": self.better.word(),
            "baseline": self.baseline.name(),
            "contenders": contenders,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_the_median_of_paired_rounds() {
        let mut metric = Metric::new(
            "tcp",
            "x",
            "x",
            "Gbit/s",
            2,
            Better::Higher,
            Contender::Limit,
            3,
        );
        for (round, (limit, ours)) in [(10.0, 9.0), (20.0, 10.0), (10.0, 8.0)]
            .into_iter()
            .enumerate()
        {
            metric.record(Contender::Limit, round, Some(limit));
            metric.record(Contender::CniEbpf, round, Some(ours));
        }
        let ours = metric.summary(Contender::CniEbpf).unwrap();
        assert_eq!(ours.median, 9.0);
        assert_eq!(ours.ratio, Some(0.8));
        assert_eq!(ours.ratio_min, Some(0.5));
        assert_eq!(ours.ratio_max, Some(0.9));
        assert_eq!(metric.summary(Contender::Limit).unwrap().ratio, Some(1.0));
        assert!(metric.summary(Contender::Bridge).is_none());
    }

    #[test]
    fn counterpart_ratio_is_paired_too() {
        let mut metric = Metric::new(
            "x",
            "x",
            "x",
            "Gbit/s",
            2,
            Better::Higher,
            Contender::Limit,
            3,
        );
        metric.counterparts = vec![(Contender::CniEbpf, Contender::Bridge)];
        let rounds = [
            (Some(9.0), Some(6.0)),
            (Some(8.0), Some(8.0)),
            (Some(1.0), None),
        ];
        for (round, (ours, bridge)) in rounds.into_iter().enumerate() {
            metric.record(Contender::CniEbpf, round, ours);
            metric.record(Contender::Bridge, round, bridge);
        }
        let versus = metric.versus(Contender::CniEbpf).unwrap();
        assert_eq!(versus.counterpart, Contender::Bridge);
        assert_eq!(versus.ratio, 1.25);
        assert_eq!(versus.ratio_min, 1.0);
        assert_eq!(versus.ratio_max, 1.5);
        assert!(metric.versus(Contender::Bridge).is_none());
        assert_eq!(
            metric.to_json()["contenders"]["cni-ebpf"]["vs_counterpart"]["counterpart"],
            "bridge"
        );
    }
}
