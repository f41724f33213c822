"""Studies built on bnnrobust: each module trains, measures and reports one question."""
