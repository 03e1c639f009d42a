"""The researcher's app at `/admin`: `view` lays out the tabs and wires their events; one
module per tab holds what the tab does, as plain functions: Studies (`studies_tab`), New
study (`new_study_tab`), Readers (`readers_tab`), Study settings (`settings_tab`), Analysis
(`analysis_tab`), Generate (`generate`; its components in `generate_blocks`), Evaluate
(`evaluate`), Experiments (`experiments`). `uploads` checks uploaded paths and extracts zips
safely; it lives here, not in `studio.web`, because the admin tabs use it and `studio.web`
sits above them (it mounts this app). `run_slots` bounds and cancels long runs; `logout.js`
is the page's Log out script."""
