"""The course's experiments and what is read from them: sweeps, comparisons, lessons, findings, the
report, figures, inspection and export."""
