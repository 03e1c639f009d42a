"""The reader's page: instructions, one stimulus at a time, the questions, progress and the
finish screen (`view`), with its keyboard and image-viewer scripts (`keyboard.js`,
`viewer.js`)."""
