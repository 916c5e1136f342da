"""The master calibration library: grouping keys, the build, the SQLite index records, explainable matching,
calibration with the chosen masters, and the `library` / `calibrate` commands."""
