"""The reader's page. `handlers`: what the reader does (open, start, answer, continue, go
back), each a plain function returning the `Screen` to show; `texts`: the instruction
screen's words and key hints; `page`: the Gradio layout that renders a `Screen`, and the
HTML of its pieces. Styles and scripts are files beside them: `screens.css` (one screen at
a time), `reader.css`, `page.css` (the page's head), `keyboard.js`, `viewer.js`,
`saving.js`, and the event hooks `shown_ms.js`, `saved.js`, `profile.js`,
`access_code.js`."""
