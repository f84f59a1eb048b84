//! The Run page's timeline: every attempt as a bar on one time axis, drawn as SVG on the server.
//!
//! It is a lane-assignment problem, not graph layout. A lane is one *call*: a step at one place in
//! the plan — `(parent step, branch, loop iteration, step)`, the columns that say where an attempt
//! ran. Retries of a call share its lane, so the space between two bars is the backoff the executor
//! waited, drawn as a dashed link with its length. Members of a parallel block and branches of a
//! fork-join run side by side in time and get lanes one under the other; a loop's iterations are
//! lanes in iteration order. Lanes are ordered by when their call first started, which keeps a
//! block's members together and reads top to bottom in the order things happened.
//!
//! Pure: attempts and a time window in, coordinates out (the template only draws them).

use std::collections::HashMap;

use super::format::duration;

/// One attempt, as the timeline needs it. Times are milliseconds since the axis's origin (the
/// run's first attempt).
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// The attempt row's id (the bar links to its details).
    pub id: String,
    pub step_id: String,
    pub parent_step_id: Option<String>,
    pub branch_name: Option<String>,
    pub loop_iteration_index: Option<i32>,
    pub attempt: i32,
    /// The run's retry round (0 before any Retry): attempts of different rounds are separated by a
    /// person's Retry, not by a backoff.
    pub retry_round: i32,
    pub status: String,
    pub start_ms: i64,
    /// `None` while it runs: the bar reaches the end of the window.
    pub end_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Lane {
    pub label: String,
    /// The label's full text (the drawn one may be cut short).
    pub title: String,
    /// A group's heading row (the compound step whose calls follow), with no bars of its own.
    pub group: bool,
    /// Drawn indented: a call inside a group.
    pub member: bool,
    pub y: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub id: String,
    pub x: f64,
    pub y: u32,
    pub width: f64,
    pub status: String,
    pub title: String,
}

/// The wait between two attempts of one call.
#[derive(Debug, Clone, PartialEq)]
pub struct Gap {
    pub x: f64,
    pub width: f64,
    pub y: u32,
    pub title: String,
    /// How long, written above the line when there is room for it.
    pub label: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub x: f64,
    pub label: String,
}

/// Everything the template draws, in SVG user units.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    pub width: u32,
    pub height: u32,
    /// Where the time axis begins (left of it: lane labels).
    pub axis_x: u32,
    pub axis_y: u32,
    pub lanes: Vec<Lane>,
    pub bars: Vec<Bar>,
    pub gaps: Vec<Gap>,
    pub ticks: Vec<Tick>,
}

const WIDTH: u32 = 960;
const LABEL_WIDTH: u32 = 220;
const LANE_HEIGHT: u32 = 24;
const BAR_HEIGHT: u32 = 16;
const AXIS_HEIGHT: u32 = 22;
/// A bar is never thinner than this, so an attempt of a millisecond is still seen and clicked.
const MIN_BAR: f64 = 3.0;
const RIGHT_MARGIN: u32 = 28;
/// A wait narrower than this has its length in its tooltip only.
const GAP_LABEL_ROOM: f64 = 56.0;
/// Characters of a lane label that fit beside the axis.
const LABEL_CHARS: usize = 30;

type LaneKey = (Option<String>, Option<String>, Option<i32>, String);

/// Lays out `spans` over `[0, window_ms]` (up to now, or to the run's end once it ended).
pub fn layout(spans: &[Span], window_ms: i64) -> Timeline {
    let window_ms = window_ms.max(spans.iter().map(|s| s.end_ms.unwrap_or(s.start_ms)).max().unwrap_or(0)).max(1);
    // Room on the right for the last tick's label, which is centred on its tick.
    let plot = f64::from(WIDTH - LABEL_WIDTH - RIGHT_MARGIN);
    let x = |ms: i64| f64::from(LABEL_WIDTH) + plot * ms.clamp(0, window_ms) as f64 / window_ms as f64;

    // Lanes in the order their call first started (ties: the order the rows came in).
    let mut order: Vec<LaneKey> = Vec::new();
    let mut lanes: HashMap<LaneKey, Vec<&Span>> = HashMap::new();
    let mut sorted: Vec<&Span> = spans.iter().collect();
    sorted.sort_by_key(|s| (s.start_ms, s.attempt));
    for span in sorted {
        let key =
            (span.parent_step_id.clone(), span.branch_name.clone(), span.loop_iteration_index, span.step_id.clone());
        lanes
            .entry(key.clone())
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push(span);
    }

    // Calls of one compound step (a parallel block's members, a loop's iterations, a fork-join's
    // branches) are grouped under a heading row where the group began among the top-level calls;
    // inside a group, by branch, then iteration, then start (a loop's body stays together per item).
    let mut rows: Vec<(Option<&str>, Option<&LaneKey>)> = Vec::new();
    let mut groups: Vec<&str> = Vec::new();
    for key in &order {
        match key.0.as_deref() {
            None => rows.push((None, Some(key))),
            Some(parent) if !groups.contains(&parent) => {
                groups.push(parent);
                rows.push((Some(parent), None));
                let mut members: Vec<(usize, &LaneKey)> =
                    order.iter().enumerate().filter(|(_, k)| k.0.as_deref() == Some(parent)).collect();
                members.sort_by(|(a_start, a), (b_start, b)| (&a.1, a.2, a_start).cmp(&(&b.1, b.2, b_start)));
                rows.extend(members.into_iter().map(|(_, key)| (None, Some(key))));
            }
            Some(_) => {}
        }
    }

    let mut timeline = Timeline {
        width: WIDTH,
        height: AXIS_HEIGHT + LANE_HEIGHT * rows.len().max(1) as u32 + 4,
        axis_x: LABEL_WIDTH,
        axis_y: AXIS_HEIGHT,
        lanes: Vec::new(),
        bars: Vec::new(),
        gaps: Vec::new(),
        ticks: ticks(window_ms).into_iter().map(|ms| Tick { x: x(ms), label: duration(ms) }).collect(),
    };
    let cut = |text: &str| {
        if text.chars().count() > LABEL_CHARS {
            let tail: Vec<char> = text.chars().rev().take(LABEL_CHARS - 1).collect();
            format!("…{}", tail.into_iter().rev().collect::<String>())
        } else {
            text.to_string()
        }
    };
    for (row, (heading, key)) in rows.into_iter().enumerate() {
        let y = AXIS_HEIGHT + LANE_HEIGHT * row as u32 + (LANE_HEIGHT - BAR_HEIGHT) / 2;
        let Some(key) = key else {
            let parent = heading.unwrap_or_default();
            let calls = order.iter().filter(|k| k.0.as_deref() == Some(parent)).count();
            let title = format!("{parent}: {calls} call{}", if calls == 1 { "" } else { "s" });
            timeline.lanes.push(Lane { label: cut(&title), title, group: true, member: false, y });
            continue;
        };
        let title = lane_title(key);
        // Inside a group the heading names the parent; the row names the rest.
        let short =
            if key.0.is_some() { lane_title(&(None, key.1.clone(), key.2, key.3.clone())) } else { title.clone() };
        timeline.lanes.push(Lane {
            label: cut(&short),
            title: title.clone(),
            group: false,
            member: key.0.is_some(),
            y,
        });
        let attempts = &lanes[key];
        for (i, span) in attempts.iter().enumerate() {
            let end = span.end_ms.unwrap_or(window_ms);
            let (left, right) = (x(span.start_ms), x(end));
            let took = if span.end_ms.is_some() { duration(end - span.start_ms) } else { "running".into() };
            timeline.bars.push(Bar {
                id: span.id.clone(),
                x: left,
                y,
                width: (right - left).max(MIN_BAR),
                status: span.status.clone(),
                title: format!("{title}: attempt {} {} ({took})", span.attempt, span.status),
            });
            // The space before an attempt of a later round is a person's Retry, not a backoff: no
            // dashed wait is drawn across it.
            if let (Some(next), Some(ended)) = (attempts.get(i + 1), span.end_ms)
                && next.retry_round == span.retry_round
            {
                let wait = (next.start_ms - ended).max(0);
                let from = x(ended).max(left + MIN_BAR);
                let width = (x(next.start_ms) - from).max(0.0);
                timeline.gaps.push(Gap {
                    x: from,
                    width,
                    y: y + BAR_HEIGHT / 2,
                    label: (width >= GAP_LABEL_ROOM).then(|| duration(wait)),
                    title: format!("{title}: waited {} before attempt {}", duration(wait), next.attempt),
                });
            }
        }
    }
    timeline
}

fn lane_title((parent, branch, iteration, step): &LaneKey) -> String {
    let mut parts = Vec::new();
    if let Some(parent) = parent {
        parts.push(parent.clone());
    }
    if let Some(branch) = branch {
        parts.push(branch.clone());
    }
    if let Some(iteration) = iteration {
        parts.push(format!("#{iteration}"));
    }
    parts.push(step.clone());
    parts.join(" › ")
}

/// Tick positions at 1, 2 or 5 × 10ⁿ ms, about six across the window, starting at 0.
fn ticks(window_ms: i64) -> Vec<i64> {
    let raw = window_ms as f64 / 6.0;
    let magnitude = 10f64.powf(raw.max(1.0).log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude);
    let step = (step as i64).max(1);
    (0..=window_ms / step).map(|i| i * step).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn span(id: &str, step: &str, attempt: i32, start: i64, end: Option<i64>) -> Span {
        Span {
            id: id.into(),
            step_id: step.into(),
            parent_step_id: None,
            branch_name: None,
            loop_iteration_index: None,
            attempt,
            retry_round: 0,
            status: if end.is_some() { "FAILED".into() } else { "RUNNING".into() },
            start_ms: start,
            end_ms: end,
        }
    }

    #[test]
    fn retries_share_their_call_lane_and_the_backoff_shows_between_them() {
        let spans =
            [span("a1", "a", 1, 0, Some(100)), span("a2", "a", 2, 300, Some(400)), span("b1", "b", 1, 400, None)];
        let timeline = layout(&spans, 1000);
        assert_eq!(timeline.lanes.iter().map(|l| l.label.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(timeline.bars[0].y, timeline.bars[1].y, "both attempts of a on one lane");
        assert_eq!(timeline.gaps.len(), 1);
        assert!(timeline.gaps[0].title.contains("waited 200 ms before attempt 2"), "{}", timeline.gaps[0].title);
        // Room on the right for the last tick's label, which is centred on its tick.
        let plot = f64::from(WIDTH - LABEL_WIDTH - RIGHT_MARGIN);
        assert!((timeline.gaps[0].width - plot * 0.2).abs() < 1e-6);
        assert_eq!(timeline.gaps[0].label.as_deref(), Some("200 ms"), "wide enough to be labelled");
        assert!(timeline.bars[2].title.ends_with("(running)"));
        assert!(
            (timeline.bars[2].x + timeline.bars[2].width - f64::from(WIDTH - RIGHT_MARGIN)).abs() < 1e-6,
            "reaches now"
        );
    }

    #[test]
    fn parallel_members_and_loop_iterations_get_lanes_of_their_own() {
        let mut spans = Vec::new();
        for (i, member) in ["x", "y"].iter().enumerate() {
            let mut s = span(&format!("m{i}"), member, 1, 10, Some(50));
            s.parent_step_id = Some("fan".into());
            spans.push(s);
        }
        for iteration in 0..2 {
            let mut s = span(
                &format!("l{iteration}"),
                "body",
                1,
                60 + 20 * i64::from(iteration),
                Some(75 + 20 * i64::from(iteration)),
            );
            s.parent_step_id = Some("each".into());
            s.loop_iteration_index = Some(iteration);
            spans.push(s);
        }
        let timeline = layout(&spans, 100);
        let labels: Vec<_> = timeline.lanes.iter().map(|l| (l.label.as_str(), l.group)).collect();
        assert_eq!(
            labels,
            [
                ("fan: 2 calls", true),
                ("x", false),
                ("y", false),
                ("each: 2 calls", true),
                ("#0 › body", false),
                ("#1 › body", false)
            ]
        );
        assert_eq!(timeline.lanes[1].title, "fan › x", "the full place in the tooltip");
        assert!(timeline.bars.iter().all(|bar| timeline.lanes.iter().any(|l| l.y == bar.y && !l.group)));
        assert!(timeline.gaps.is_empty());
    }

    #[test]
    fn groups_sit_where_they_began_and_a_loops_body_stays_together_per_item() {
        let mut spans = vec![span("b", "before", 1, 0, Some(5)), span("a", "after", 1, 200, Some(210))];
        // Parallel loop iterations: both items' `prepare` start before either `process`.
        for (id, step, iteration, start) in
            [("p0", "prepare", 0, 10), ("p1", "prepare", 1, 11), ("q0", "process", 0, 50), ("q1", "process", 1, 51)]
        {
            let mut s = span(id, step, 1, start, Some(start + 20));
            s.parent_step_id = Some("each".into());
            s.loop_iteration_index = Some(iteration);
            spans.push(s);
        }
        let timeline = layout(&spans, 300);
        let labels: Vec<_> = timeline.lanes.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(
            labels,
            ["before", "each: 4 calls", "#0 › prepare", "#0 › process", "#1 › prepare", "#1 › process", "after"]
        );
    }

    #[test]
    fn a_person_retrying_the_run_is_not_drawn_as_a_backoff() {
        let mut second_round = span("a2", "a", 2, 5_000, Some(5_010));
        second_round.retry_round = 1;
        let timeline = layout(&[span("a1", "a", 1, 0, Some(10)), second_round], 6_000);
        assert_eq!(timeline.bars.len(), 2);
        assert!(timeline.gaps.is_empty(), "{:?}", timeline.gaps);
    }

    #[test]
    fn ticks_fall_on_round_numbers() {
        assert_eq!(ticks(1000), vec![0, 200, 400, 600, 800, 1000]);
        assert_eq!(ticks(45), vec![0, 10, 20, 30, 40]);
    }

    proptest! {
        /// Every attempt is drawn once, inside the plot; bars of one lane never overlap when the
        /// attempts of a call follow one another; no gap is negative.
        #[test]
        fn every_attempt_is_drawn_once_and_lanes_do_not_overlap(
            calls in proptest::collection::vec((0i64..5_000, proptest::collection::vec((0i64..2_000, 0i64..2_000), 1..4)), 1..12),
            window in 1i64..20_000,
        ) {
            let mut spans = Vec::new();
            for (c, (start, attempts)) in calls.iter().enumerate() {
                let mut at = *start;
                for (a, (run, wait)) in attempts.iter().enumerate() {
                    spans.push(span(&format!("{c}-{a}"), &format!("s{c}"), a as i32 + 1, at, Some(at + run)));
                    at += run + wait;
                }
            }
            let timeline = layout(&spans, window);
            prop_assert_eq!(timeline.bars.len(), spans.len());
            let mut ids: Vec<_> = timeline.bars.iter().map(|b| b.id.clone()).collect();
            ids.sort();
            ids.dedup();
            prop_assert_eq!(ids.len(), spans.len());
            for bar in &timeline.bars {
                prop_assert!(bar.x >= f64::from(LABEL_WIDTH) && bar.x <= f64::from(WIDTH));
            }
            for gap in &timeline.gaps {
                prop_assert!(gap.width >= 0.0);
            }
            for lane in &timeline.lanes {
                let mut bars: Vec<_> = timeline.bars.iter().filter(|b| b.y == lane.y).collect();
                bars.sort_by(|a, b| a.x.total_cmp(&b.x));
                for pair in bars.windows(2) {
                    // A bar widened to the minimum width may reach past its neighbour's start by
                    // no more than that width.
                    prop_assert!(pair[0].x + pair[0].width <= pair[1].x + MIN_BAR + 1e-9);
                }
            }
        }
    }
}
