"""Lightning callbacks of bnnrobust (configs refer to them by class path)."""
