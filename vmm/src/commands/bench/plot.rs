//! `husk bench --plot FILE.svg`: the latency distribution of every measured millisecond
//! scenario as an empirical CDF (one panel each: x = latency, y = share of runs at or
//! below it), with the p50 and p99 marked. Drawn with plotters' SVG backend.

use std::path::Path;

use plotters::prelude::*;

use super::report::{Report, Status};

/// Plot failures.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Nothing to draw.
    #[error("no measured latency scenario to plot")]
    Empty,
    /// plotters failed (drawing or writing the file).
    #[error("cannot draw {path}: {message}")]
    Draw {
        /// The SVG file.
        path: String,
        /// plotters' error.
        message: String,
    },
}

/// The (x, y) points of the empirical CDF of `samples`: each sorted sample at its rank / n.
pub fn ecdf(samples: &[f64]) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|s| s.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    v.iter()
        .enumerate()
        .map(|(i, &x)| (x, (i + 1) as f64 / n))
        .collect()
}

/// Draw `report`'s measured `ms` scenarios into the SVG file `path`.
pub fn draw(report: &Report, path: &Path) -> Result<(), PlotError> {
    let panels: Vec<_> = report
        .scenarios
        .iter()
        .filter(|s| s.status == Status::Measured && s.unit == "ms")
        .filter_map(|s| s.summary.map(|m| (s, m)))
        .collect();
    if panels.is_empty() {
        return Err(PlotError::Empty);
    }
    let err = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let height = 240 * u32::try_from(panels.len()).unwrap_or(1);
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let areas = root.split_evenly((panels.len(), 1));
    for (area, (s, m)) in areas.iter().zip(&panels) {
        let span = (m.max - m.min).max(m.max * 0.02).max(0.001);
        let (lo, hi) = ((m.min - span * 0.1).max(0.0), m.max + span * 0.1);
        let vmm = s.vmm.as_deref().unwrap_or("");
        let caption = format!(
            "{} [{vmm}] n={} p50={:.3} p99={:.3} ms",
            s.title, m.n, m.p50, m.p99
        );
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(lo..hi, 0.0f64..1.05f64)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("ms")
            .y_desc("share <= x")
            .draw()
            .map_err(|e| err(&e))?;
        let pts = ecdf(&s.samples);
        // A step line: flat until the next sample, then up.
        let mut steps = Vec::with_capacity(pts.len() * 2 + 1);
        steps.push((lo, 0.0));
        let mut prev = 0.0;
        for &(x, y) in &pts {
            steps.push((x, prev));
            steps.push((x, y));
            prev = y;
        }
        steps.push((hi, prev));
        chart
            .draw_series(LineSeries::new(steps, &BLUE))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(
                pts.iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, BLUE.filled())),
            )
            .map_err(|e| err(&e))?;
        for (x, color) in [(m.p50, &RED), (m.p99, &MAGENTA)] {
            chart
                .draw_series(LineSeries::new(vec![(x, 0.0), (x, 1.05)], color))
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdf_steps_up_to_one() {
        assert_eq!(
            ecdf(&[3.0, 1.0, 2.0, 4.0]),
            vec![(1.0, 0.25), (2.0, 0.5), (3.0, 0.75), (4.0, 1.0)]
        );
        assert!(ecdf(&[]).is_empty());
    }

    #[test]
    fn draws_an_svg_with_one_panel_per_latency_scenario() {
        let r = super::super::report::tests::sample_report();
        let path = std::env::temp_dir().join(format!("husk-bench-plot-{}.svg", std::process::id()));
        draw(&r, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        // The two measured ms scenarios have panels; skipped and failed ones do not.
        assert!(
            svg.contains("boot -&gt; ready") || svg.contains("boot -> ready"),
            "no boot panel"
        );
        assert!(svg.contains("invoke round trip"));
        assert!(
            svg.contains("pool invocation latency at 5 req/s"),
            "no pool panel"
        );
        assert!(!svg.contains("restore"));
        assert!(svg.matches("<circle").count() >= 5, "one point per sample");
    }

    #[test]
    fn nothing_measured_is_an_error() {
        let mut r = super::super::report::tests::sample_report();
        r.scenarios.retain(|s| s.status != Status::Measured);
        assert!(matches!(
            draw(&r, Path::new("/nonexistent/x.svg")),
            Err(PlotError::Empty)
        ));
    }
}
