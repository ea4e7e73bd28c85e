//! SVG charts drawn by the server: a line chart of per-round figures and horizontal
//! bars of ε spent against budget. Presentation attributes only (no `style`), so the
//! console's Content-Security-Policy needs no inline styles.

use std::fmt::Write as _;

use super::pages::esc;

const W: f64 = 560.0;
const H: f64 = 220.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 32.0;
/// Points of a line chart drawn with a marker (the latest).
const MAX_MARKERS: usize = 60;

/// Formats a tick or value label: at most 4 significant decimals.
fn label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A line chart of `points` (x = round, y = figure), titled `title`, with `id` on the
/// `<svg>` element. A chart with no point says `empty`.
pub(super) fn line_chart(id: &str, title: &str, points: &[(f64, f64)], empty: &str) -> String {
    let mut svg = format!(
        "<svg id=\"{id}\" class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-label=\"{t}\" data-points=\"{n}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title>{t}</title>",
        t = esc(title),
        n = points.len()
    );
    let points: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if points.is_empty() {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"12\" fill=\"#667\">{}</text></svg>",
            W / 2.0,
            H / 2.0,
            esc(empty)
        );
        return svg;
    }
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in &points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 - x0 < 1.0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.1).max(1e-3 * y1.abs().max(1e-3));
    y0 -= pad;
    y1 += pad;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let sy = |y: f64| TOP + (y1 - y) / (y1 - y0) * (H - TOP - BOTTOM);
    // Axes and y ticks.
    let _ = write!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#889\"/>\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b}\" stroke=\"#889\"/>",
        b = H - BOTTOM,
        r = W - RIGHT
    );
    for i in 0..=4 {
        let v = y0 + (y1 - y0) * f64::from(i) / 4.0;
        let y = sy(v);
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{r}\" y2=\"{y:.1}\" stroke=\"#e3e6ea\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\" font-size=\"11\" fill=\"#556\">{l}</text>",
            r = W - RIGHT,
            tx = LEFT - 6.0,
            ty = y + 4.0,
            l = label(v)
        );
    }
    // X ticks: at most 10 rounds labelled.
    let span = (x1 - x0).ceil() as u64;
    let step = span.div_ceil(10).max(1);
    let mut x = x0.ceil() as u64;
    while (x as f64) <= x1 {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\" fill=\"#556\">{x}</text>",
            sx(x as f64),
            H - BOTTOM + 16.0
        );
        x += step;
    }
    let path: Vec<String> = points
        .iter()
        .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
        .collect();
    let _ = write!(
        svg,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#2563eb\" stroke-width=\"2\"/>",
        path.join(" ")
    );
    // Markers (with the value on hover) for the latest points only: the page stays small.
    for &(x, y) in points.iter().skip(points.len().saturating_sub(MAX_MARKERS)) {
        let _ = write!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#2563eb\"><title>round {x}: {}</title></circle>",
            sx(x),
            sy(y),
            label(y)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Horizontal bars: for each `(partner, spent, budget)`, ε spent against the budget.
pub(super) fn budget_bars(id: &str, rows: &[(String, f64, Option<f64>)]) -> String {
    let row_h = 28.0;
    let height = TOP + row_h * rows.len().max(1) as f64 + BOTTOM;
    let name_w = 150.0;
    let bar_w = W - name_w - 90.0;
    let mut svg = format!(
        "<svg id=\"{id}\" class=\"chart\" viewBox=\"0 0 {W} {height}\" role=\"img\" \
         aria-label=\"cumulative epsilon against budget per partner\" data-points=\"{n}\" \
         xmlns=\"http://www.w3.org/2000/svg\"><title>cumulative ε against budget</title>",
        n = rows.len()
    );
    if rows.is_empty() {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#667\">nothing charged yet</text></svg>",
            W / 2.0,
            height / 2.0
        );
        return svg;
    }
    let max = rows
        .iter()
        .map(|(_, s, b)| s.max(b.unwrap_or(0.0)))
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    for (i, (partner, spent, budget)) in rows.iter().enumerate() {
        let y = TOP + row_h * i as f64;
        let w = |v: f64| (v / max * bar_w).clamp(0.0, bar_w);
        let fraction = budget.filter(|b| *b > 0.0).map(|b| spent / b);
        let colour = match fraction {
            Some(f) if f >= 1.0 => "#dc2626",
            Some(f) if f >= 0.8 => "#d97706",
            _ => "#2563eb",
        };
        let _ = write!(
            svg,
            "<text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\" font-size=\"12\" fill=\"#223\">{p}</text>",
            tx = name_w - 8.0,
            ty = y + 15.0,
            p = esc(partner)
        );
        if let Some(b) = budget {
            let _ = write!(
                svg,
                "<rect x=\"{name_w}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"18\" fill=\"#e5e7eb\"/>",
                w(*b)
            );
        }
        let _ = write!(
            svg,
            "<rect x=\"{name_w}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"18\" fill=\"{colour}\"/>\
             <text x=\"{lx:.1}\" y=\"{ty:.1}\" font-size=\"11\" fill=\"#223\">{s} / {b}</text>",
            w(*spent),
            lx = name_w + bar_w + 6.0,
            ty = y + 14.0,
            s = label(*spent),
            b = budget.map(label).unwrap_or_else(|| "?".into())
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_and_escape_names() {
        let svg = line_chart(
            "c",
            "ROC-AUC",
            &[(1.0, 0.7), (2.0, 0.75), (3.0, 0.8)],
            "none",
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("data-points=\"3\""));
        assert_eq!(svg.matches("<circle").count(), 3);
        let empty = line_chart("c", "x", &[], "no rounds yet");
        assert!(empty.contains("no rounds yet"));
        let bars = budget_bars("b", &[("<a>".into(), 1.0, Some(8.0))]);
        assert!(bars.contains("&lt;a&gt;") && !bars.contains("<a>"));
        assert!(!bars.contains("style="), "no inline styles (CSP)");
    }
}
