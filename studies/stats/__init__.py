"""Reader-study statistics: pure functions of the long table (no SQLite, no web).

    columns      the tasks, their scales and the long/iMRMC table columns (once)
    values       reading the table's yes/no columns and sorting labels naturally (once)
    analysis     data rules and the assembled result (`analyze`)
    proportions  binary summaries, Wilson/Newcombe intervals, reader-level t-tests
    roc, mrmc    AUC and Obuchowski-Rockette MRMC (checked against iMRMC's published outputs)
    agreement    Fleiss/Cohen kappa, Krippendorff alpha, ICC
    likert       ordinal summaries and Mann-Whitney tests
    pairs        paired two-alternative forced choice
    remarks      comments and non-diagnostic flags
    power        sample-size planning; simulate: synthetic long tables for tests and planning
    numbers      one way to print a statistic
    charts       the report's plotly figures
    report       the self-contained HTML report

Imports nothing else of the project except `studies.errors`.
"""
