//! A small line chart in SVG: a few series over the same recent samples,
//! scaled to the largest value shown. No axes beyond that maximum; the point is
//! the shape of the last minutes, with the latest values written out.

use leptos::prelude::*;

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series {
    /// Its name in the legend.
    pub(crate) label: &'static str,
    /// Its CSS class (the stroke colour).
    pub(crate) class: &'static str,
    /// Oldest first.
    pub(crate) values: Vec<f64>,
}

impl Series {
    /// A named series.
    pub(crate) fn new(label: &'static str, class: &'static str, values: Vec<f64>) -> Self {
        Self {
            label,
            class,
            values,
        }
    }
}

const WIDTH: f64 = 300.0;
const HEIGHT: f64 = 80.0;

/// The SVG `points` of `values` in a `WIDTH`×`HEIGHT` box whose top is `max`.
fn points(values: &[f64], max: f64, slots: usize) -> String {
    let step = WIDTH / (slots.max(2) - 1) as f64;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let y = HEIGHT - (v / max).clamp(0.0, 1.0) * (HEIGHT - 4.0) - 2.0;
            format!("{:.1},{:.1}", i as f64 * step, y)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn latest(values: &[f64]) -> String {
    match values.last() {
        Some(v) if *v >= 10.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "—".to_owned(),
    }
}

/// A chart of `series`, redrawn when they change.
#[component]
pub(crate) fn Sparkline(
    title: &'static str,
    testid: &'static str,
    #[prop(into)] series: Signal<Vec<Series>>,
) -> impl IntoView {
    let chart = move || {
        let all = series.get();
        let slots = all.iter().map(|s| s.values.len()).max().unwrap_or(0);
        let max = all
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .fold(0.0_f64, f64::max)
            .max(1.0);
        let lines = all
            .iter()
            .map(|s| {
                view! { <polyline class=s.class fill="none" points=points(&s.values, max, slots) /> }
            })
            .collect_view();
        let legend = all
            .iter()
            .map(|s| {
                view! {
                    <span class=format!("key {}", s.class)>
                        {format!("{} {}", s.label, latest(&s.values))}
                    </span>
                }
            })
            .collect_view();
        let samples = slots;
        view! {
            <svg
                viewBox=format!("0 0 {WIDTH} {HEIGHT}")
                preserveAspectRatio="none"
                role="img"
                aria-label=format!("{title}: {samples} samples, top of the chart {max:.1}")
            >
                {lines}
            </svg>
            <p class="legend">{legend}<span class="max">{format!("top {max:.1}")}</span></p>
        }
    };
    view! {
        <figure class="chart" data-testid=testid>
            <figcaption>{title}</figcaption>
            {chart}
        </figure>
    }
}

/// `part` as a whole percentage of `whole`, or "—" when `whole` is 0.
pub(crate) fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "—".to_owned()
    } else {
        format!("{:.0}%", 100.0 * part as f64 / whole as f64)
    }
}
