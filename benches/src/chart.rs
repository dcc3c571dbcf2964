//! The PNG chart of a run: closed-loop throughput of each contender as a fraction of direct
//! traffic in the same scenario (1.0 = no proxy), one bar each.

use anyhow::{Context, Result};
use plotters::prelude::*;
use std::path::Path;

/// The font the chart's text is drawn with (Debian's fonts-dejavu-core, installed by
/// scripts/setup-bench.sh).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Draws `bars` (label, fraction of direct) into `path`.
pub fn throughput_chart(path: &Path, title: &str, bars: &[(String, f64)]) -> Result<()> {
    let bytes = std::fs::read(FONT).with_context(|| format!("reading {FONT} (run scripts/setup-bench.sh)"))?;
    // plotters keeps registered fonts for the life of the process; the bench draws one chart.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;

    let height = 120 + 44 * bars.len() as u32;
    let root = BitMapBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("drawing: {e}"))?;
    let max = bars.iter().map(|(_, v)| *v).filter(|v| v.is_finite()).fold(1.0_f64, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(420)
        .build_cartesian_2d(0.0..max, (0..bars.len()).into_segmented())
        .map_err(|e| anyhow::anyhow!("drawing: {e}"))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("closed-loop throughput as a fraction of direct (same scenario, same run)")
        .y_labels(bars.len())
        .y_label_formatter(&|segment| match segment {
            SegmentValue::CenterOf(i) => bars.get(*i).map(|(label, _)| label.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| anyhow::anyhow!("drawing: {e}"))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (label, value))| {
            let color = if label.contains("Nodus") { RGBColor(0x2b, 0x6c, 0xb0) } else { RGBColor(0x99, 0x99, 0x99) };
            let value = if value.is_finite() { *value } else { 0.0 };
            Rectangle::new([(0.0, SegmentValue::Exact(i)), (value, SegmentValue::Exact(i + 1))], color.filled())
        }))
        .map_err(|e| anyhow::anyhow!("drawing: {e}"))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, value))| {
            Text::new(
                format!("{value:.2}x"),
                (value.max(0.0) + max * 0.01, SegmentValue::CenterOf(i)),
                ("sans-serif", 15),
            )
        }))
        .map_err(|e| anyhow::anyhow!("drawing: {e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn draws_a_png() {
        if !Path::new(FONT).exists() {
            eprintln!("SKIPPED: {FONT} missing (scripts/setup-bench.sh installs it)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        throughput_chart(&path, "test", &[("A: Nodus".into(), 0.7), ("A: nginx".into(), 0.9)]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 1000);
    }
}
