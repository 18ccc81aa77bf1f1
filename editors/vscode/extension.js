// Starts `dlspec lsp` (the language server that ships with dlspec) for .dl files.
const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const [command, ...args] = vscode.workspace
    .getConfiguration("dlspec")
    .get("command", ["dlspec", "lsp"]);
  client = new LanguageClient(
    "dlspec",
    "dlspec",
    { command, args },
    { documentSelector: [{ scheme: "file", language: "dlspec" }] }
  );
  context.subscriptions.push(client);
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
