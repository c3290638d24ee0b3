"""Templates and static assets of the SMART trend page (a package so that they ship in the wheel)."""
