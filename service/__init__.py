"""The CDS Hooks protocol layer of ivig-cds (Flask): thin, with every HTTP answer made at one edge."""
