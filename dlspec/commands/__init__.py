"""One module per ``dlspec`` command, plus what they share (:mod:`dlspec.commands.common`)."""
