//! Learned baselines: a robust rolling median and MAD per region × step.
//!
//! Each region and step (wire name, plus `rtt` for the round trip) keeps the
//! newest `window` durations from *delivered* rounds (`ok` or `degraded`;
//! never from failed ones, whose partial timings say nothing about normal).
//! Degraded rounds are included on purpose: a permanent shift (a new relay,
//! a slower mailbox server) fills the window with the new level and is
//! absorbed after about `window / 2` rounds, instead of alarming forever.
//!
//! Median and MAD rather than mean and standard deviation: one 30-second
//! fluke must not move the threshold. The MAD is scaled by 1.4826 so it
//! estimates a standard deviation for normally distributed timings. Once a
//! step has `min_samples` samples, it is slow above
//! `max(median * factor, median + 6 * MAD, median + floor_ms)`: the factor
//! catches real slowdowns of steady steps, the MAD term keeps naturally
//! jittery steps (`imap.wait`) quiet, and the floor keeps 1 ms steps from
//! alarming on 3 ms.

use super::model::{BaselineSettings, BaselineView};
use std::collections::{BTreeMap, VecDeque};

/// The MAD of a normal distribution times this is its standard deviation.
const MAD_SCALE: f64 = 1.4826;

/// The statistics of one region × step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub samples: usize,
    pub median_ms: f64,
    pub mad_ms: f64,
    /// `None` until `min_samples` samples were seen.
    pub threshold_ms: Option<f64>,
}

/// Every learned baseline of one check.
#[derive(Debug, Clone, Default)]
pub struct Baselines {
    samples: BTreeMap<(String, String), VecDeque<f64>>,
}

impl Baselines {
    /// Adds one delivered round's duration, dropping the oldest beyond `window`.
    pub fn add(&mut self, settings: &BaselineSettings, region: &str, step: &str, ms: f64) {
        if !ms.is_finite() || ms < 0.0 {
            return;
        }
        let window = settings.window.max(1);
        let q = self
            .samples
            .entry((region.to_string(), step.to_string()))
            .or_default();
        q.push_back(ms);
        while q.len() > window {
            q.pop_front();
        }
    }

    /// The statistics as they are now (before any sample of the round being judged).
    pub fn stats(&self, settings: &BaselineSettings, region: &str, step: &str) -> Option<Stats> {
        let q = self.samples.get(&(region.to_string(), step.to_string()))?;
        stats_of(settings, q.iter().copied())
    }

    /// Every baseline, sorted by region and step; `static_ms` gives a step's
    /// static threshold from the check's table.
    pub fn views(
        &self,
        settings: &BaselineSettings,
        static_ms: impl Fn(&str) -> Option<f64>,
    ) -> Vec<BaselineView> {
        self.samples
            .iter()
            .map(|((region, step), q)| {
                let stats = stats_of(settings, q.iter().copied());
                BaselineView {
                    region: region.clone(),
                    step: step.clone(),
                    samples: q.len(),
                    median_ms: stats.map(|s| s.median_ms),
                    mad_ms: stats.map(|s| s.mad_ms),
                    threshold_ms: stats.and_then(|s| s.threshold_ms),
                    static_threshold_ms: static_ms(step),
                }
            })
            .collect()
    }
}

fn stats_of(settings: &BaselineSettings, values: impl Iterator<Item = f64>) -> Option<Stats> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    let median_ms = median(&mut v);
    let mut dev: Vec<f64> = v.iter().map(|x| (x - median_ms).abs()).collect();
    let mad_ms = median(&mut dev) * MAD_SCALE;
    let threshold_ms = (v.len() >= settings.min_samples.max(1)).then(|| {
        (median_ms * settings.factor)
            .max(median_ms + 6.0 * mad_ms)
            .max(median_ms + settings.floor_ms)
    });
    Some(Stats {
        samples: v.len(),
        median_ms,
        mad_ms,
        threshold_ms,
    })
}

/// The median (the mean of the two middle values for an even count).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BaselineSettings {
        BaselineSettings {
            window: 10,
            min_samples: 5,
            factor: 3.0,
            floor_ms: 25.0,
        }
    }

    #[test]
    fn median_and_scaled_mad() {
        let mut b = Baselines::default();
        for ms in [10.0, 12.0, 11.0, 13.0, 100.0] {
            b.add(&settings(), "eu", "smtp.auth", ms);
        }
        let s = b.stats(&settings(), "eu", "smtp.auth").unwrap();
        assert_eq!(s.median_ms, 12.0);
        // deviations 2, 0, 1, 1, 88 -> median 1
        assert!((s.mad_ms - 1.4826).abs() < 1e-9);
        // max(36, 12 + 8.9, 12 + 25) = 37
        assert_eq!(s.threshold_ms, Some(37.0));
    }

    #[test]
    fn no_threshold_before_min_samples_and_window_is_bounded() {
        let mut b = Baselines::default();
        for _ in 0..4 {
            b.add(&settings(), "eu", "rtt", 40.0);
        }
        assert_eq!(
            b.stats(&settings(), "eu", "rtt").unwrap().threshold_ms,
            None
        );
        for _ in 0..20 {
            b.add(&settings(), "eu", "rtt", 400.0);
        }
        let s = b.stats(&settings(), "eu", "rtt").unwrap();
        assert_eq!((s.samples, s.median_ms), (10, 400.0));
    }
}
